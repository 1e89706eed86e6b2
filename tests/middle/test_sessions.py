"""A server session fed whatever a hostile device may send, in memory: whatever the bytes,
no exception escapes its callbacks (asyncio would log it as a traceback and drop the
connection), and the session either carries on or closes with a code."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import struct
import time
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import wire
from overlay.codel import Codel
from overlay.server.budget import TokenBucket
from overlay.server.leases import Lease
from overlay.server.lifecycle import State
from overlay.server.router import TURN_PACKETS
from overlay.server.sessions import ServerSession
from tests.faketun import FakeTun
from tests.middle.test_router import router_for
from tests.packets import ipv4

ADDRESS = "169.254.1.1"


class FakeTransport(asyncio.Transport):
    """Records what the session writes; reading can be paused, like a socket's."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.pauses = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """A client's frame, as a device (or someone pretending to be one) writes it."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head = struct.pack("!BB", first, mask_bit | len(payload))
    elif len(payload) < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, len(payload))
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, len(payload))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


PACKETS = st.sampled_from(
    [
        ipv4(ADDRESS, "169.254.0.1", 17, b"<13>x", 40000, 514),  # allowed
        ipv4(ADDRESS, "169.254.0.1", 17, b"x", 40000, 9999),  # refused
        ipv4("169.254.1.9", "169.254.0.1", 17, b"x", 40000, 514),  # spoofed
        b"\x45garbage",
    ]
)
FRAMES = st.one_of(
    st.builds(
        lambda packets, fin, masked: frame(0x2, b"".join(packets), fin, masked),
        st.lists(PACKETS, max_size=80),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        frame,
        st.integers(0, 15),
        st.binary(max_size=200),
        st.booleans(),
        st.booleans(),
    ),
    st.binary(max_size=64),
)


def run_session(chunks: list[bytes]) -> tuple[ServerSession, FakeTransport, list[str]]:
    """Open a session on a fake transport, feed it ``chunks`` a loop turn apart, and
    return it with what it wrote and what the loop caught."""
    caught: list[str] = []

    async def feed() -> tuple[ServerSession, FakeTransport]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: caught.append(context["message"]))
        tun = FakeTun()
        router = router_for(tun)
        lease = Lease("dev1", "default", ipaddress.IPv4Address(ADDRESS), 0.0)
        session = ServerSession(
            router,
            router.detach,
            lease,
            "198.18.0.2",
            "0123456789abcdef",
            65536,
            65536,
            60,
            3,
            Codel(),
            TokenBucket(10, 200, time.monotonic()),
            Counter(),
        )
        router.attach(session)
        transport = FakeTransport()
        session.take(transport, b"")
        session.open(wire.Hello("169.254.1.1", 16, "169.254.0.1", 1400, 60, 65536, "s"))
        for chunk in chunks:
            session.data_received(chunk)
            await asyncio.sleep(0)
        for _ in range(100):  # the turns a flood was put off to
            await asyncio.sleep(0)
        session.connection_lost(None)
        tun.close()
        return session, transport

    session, transport = asyncio.run(feed())
    return session, transport, caught


@settings(max_examples=150, deadline=None)
@given(st.lists(FRAMES, max_size=12), st.integers(1, 97))
def test_whatever_a_device_sends_the_session_never_raises(frames: list[bytes], cut: int) -> None:
    stream = b"".join(frames)
    chunks = [stream[i : i + cut] for i in range(0, len(stream), cut)]  # any split
    session, transport, caught = run_session(chunks)
    assert caught == []
    assert session.lifecycle.state is State.CLOSED
    assert session.close_code is not None
    assert transport.written.startswith(b"\x81")  # the hello came first, as text


def test_a_flood_is_delivered_over_several_turns_and_reading_resumes() -> None:
    syslog = ipv4(ADDRESS, "169.254.0.1", 17, b"<13>x", 40000, 514)
    flood = frame(0x2, syslog * 500)
    session, transport, caught = run_session([flood])
    assert caught == []
    delivered = session.counters.rx_packets + session.counters.drops["tun-full"]
    assert delivered == 500  # (the fake TUN's queue holds a few hundred)
    assert transport.pauses == 500 // TURN_PACKETS  # not read while the rest waited a turn
    assert transport.reading  # and read again after
    assert session.close_code == 1006  # the connection went; nobody sent a close
