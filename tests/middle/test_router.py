"""The router between a fake TUN and fake sessions: what passes, what is dropped and counted,
and that one stalled session does not delay another (Tailscale derp's TestSendFreeze)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import AsyncIterator

import pytest

from overlay.offload import PLAIN
from overlay.server.firewall import Firewall, Limits
from overlay.server.policy import Policy
from overlay.server.router import TURN_PACKETS, Router
from overlay.server.rules import Ruleset, load_profiles
from tests.faketun import FakeTun
from tests.middle.conftest import FakeSession, RecordingSocket, wait_until
from tests.packets import ipv4

SERVER = "169.254.0.1"
MANAGER = "169.254.0.1"  # the server's own address: management tools on its host


def router_for(tun: FakeTun) -> Router[FakeSession]:
    ruleset = Ruleset.build([{"profile": "ovoc-management"}], load_profiles(None))
    return Router(tun, Policy(), Firewall(ruleset, Limits()), batch_bytes=65536)


class Tap:
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes]] = []

    def offer(self, address: bytes, packet: bytes | memoryview) -> None:
        self.seen.append((address, bytes(packet)))


@pytest.fixture
async def running(tun: FakeTun) -> AsyncIterator[Router[FakeSession]]:
    """A router reading the fake TUN as the server's does (a reader callback)."""
    router = router_for(tun)
    task = asyncio.create_task(router.run())
    await asyncio.sleep(0)
    yield router
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_device_frame_passes_policy_and_firewall_and_taps_see_it(tun: FakeTun) -> None:
    router, session, tap = router_for(tun), FakeSession("dev1", "169.254.1.1"), Tap()
    router.attach(session)
    syslog = ipv4("169.254.1.1", SERVER, 17, b"<13>hello", 40000, 514)
    ntp = ipv4("169.254.1.1", SERVER, 17, b"\x23" + bytes(47), 123, 123)
    with router.tapped(tap):
        assert deliver(router, session, syslog + ntp) == 0
    deliver(router, session, syslog)  # the tap is gone
    assert tun.written() == [syslog, ntp, syslog]
    assert tap.seen == [(session.address_bytes, syslog), (session.address_bytes, ntp)]
    assert session.counters.rx_packets == 3
    assert not session.counters.drops


async def test_spoofed_device_isolation_options_and_unallowed_ports_are_dropped_and_counted(
    tun: FakeTun,
) -> None:
    router, session = router_for(tun), FakeSession("dev1", "169.254.1.1")
    router.attach(session)
    spoofed = ipv4("169.254.1.9", SERVER, 17, b"x", 40000, 514)
    other_device = ipv4("169.254.1.1", "169.254.1.2", 17, b"x", 40000, 514)
    unallowed = ipv4("169.254.1.1", SERVER, 17, b"x", 40000, 9999)
    plain = ipv4("169.254.1.1", SERVER, 17, b"x", 40000, 514)
    # a loose source route (option 131) naming another device: IHL 7, the option, a pad
    routed = bytes([0x47]) + plain[1:20] + bytes([131, 7, 4, 169, 254, 1, 2, 0]) + plain[20:]
    routed = routed[:2] + len(routed).to_bytes(2, "big") + routed[4:]
    assert deliver(router, session, spoofed + other_device + unallowed + routed) == 4
    assert deliver(router, session, b"\x45garbage") == 1
    assert tun.written() == []
    assert dict(session.counters.drops) == {
        "spoofed": 1,
        "policy": 2,  # another device; a port no rule allows
        "ip-options": 1,
        "malformed": 1,
    }


def deliver(router: Router[FakeSession], session: FakeSession, frame: bytes) -> int:
    """Deliver a whole frame as a session does, a turn's budget at a time; return how
    many packets were refused."""
    records = router.split(session, frame)
    if records is None:
        return 1
    index, refused = 0, 0
    while index < len(records):
        session.turn_budget = TURN_PACKETS
        index, more = router.from_device(session, records, index)
        refused += more
    return refused


async def test_a_frame_of_many_packets_is_delivered_a_turn_at_a_time(tun: FakeTun) -> None:
    """One device's frame of thousands of small packets must not hold the event loop for
    all of them: the router stops after TURN_PACKETS, and goes on from there."""
    router, session = router_for(tun), FakeSession("dev1", "169.254.1.1")
    router.attach(session)
    syslog = ipv4("169.254.1.1", SERVER, 17, b"<13>x", 40000, 514)
    records = router.split(session, syslog * (TURN_PACKETS * 2 + 5))
    assert records is not None
    assert router.from_device(session, records, 0) == (TURN_PACKETS, 0)
    assert session.turn_budget == 0
    assert router.from_device(session, records, TURN_PACKETS) == (TURN_PACKETS, 0)  # spent
    session.turn_budget = TURN_PACKETS
    assert router.from_device(session, records, TURN_PACKETS) == (TURN_PACKETS * 2, 0)
    session.turn_budget = TURN_PACKETS
    assert router.from_device(session, records, TURN_PACKETS * 2) == (len(records), 0)
    assert session.turn_budget == TURN_PACKETS - 5
    assert len(tun.written()) == len(records) == session.counters.rx_packets


async def test_a_packet_for_an_address_without_session_is_dropped_and_counted(
    tun: FakeTun, running: Router[FakeSession]
) -> None:
    tun.inject(ipv4(MANAGER, "169.254.1.99", 17, b"x", 40000, 161))
    await wait_until(lambda: running.drops["no-session"] == 1)


async def test_management_traffic_reaches_the_session_of_its_address(
    tun: FakeTun, running: Router[FakeSession]
) -> None:
    session, ws = FakeSession("dev1", "169.254.1.1"), RecordingSocket()
    running.attach(session)
    sending = asyncio.create_task(session.sender.run(ws))
    poll = ipv4(MANAGER, "169.254.1.1", 17, b"get", 40000, 161)
    tun.inject(poll)
    await asyncio.wait_for(ws.sent.wait(), 5)
    assert ws.frames == [poll]
    sending.cancel()


async def test_a_device_answers_the_management_lan_but_opens_nothing_there(tun: FakeTun) -> None:
    """[lan] management: the NMS at its real LAN address polls; the device's reply passes;
    what the device itself sends to that LAN is dropped as policy."""
    ruleset = Ruleset.build([{"profile": "ovoc-management"}], load_profiles(None))
    lan = ipaddress.IPv4Network("198.18.2.0/24")
    router = Router(tun, Policy(management=[lan]), Firewall(ruleset, Limits()), 65536)
    session, ws = FakeSession("dev1", "169.254.1.1"), RecordingSocket()
    router.attach(session)
    reading = asyncio.create_task(router.run())
    sending = asyncio.create_task(session.sender.run(ws))
    poll = ipv4("198.18.2.10", "169.254.1.1", 17, b"get", 40000, 161)
    tun.inject(poll)
    await asyncio.wait_for(ws.sent.wait(), 5)
    assert ws.frames == [poll]  # judged by its real source, allowed by the profile
    reply = ipv4("169.254.1.1", "198.18.2.10", 17, b"response", 161, 40000)
    opened = ipv4("169.254.1.1", "198.18.2.10", 17, b"<13>syslog", 40001, 514)
    ping = ipv4("169.254.1.1", "198.18.2.10", 1, bytes([8, 0, 0, 0, 0, 1, 0, 1]))
    beyond = ipv4("169.254.1.1", "198.18.3.10", 17, b"x", 161, 40000)
    assert deliver(router, session, reply + opened + ping + beyond) == 3
    assert tun.written() == [reply]
    assert dict(session.counters.drops) == {"policy": 3}
    reading.cancel()
    sending.cancel()
    await asyncio.gather(reading, sending, return_exceptions=True)


async def test_one_stalled_session_does_not_delay_another(
    tun: FakeTun, running: Router[FakeSession]
) -> None:
    stalled, lively = (
        FakeSession("dev1", "169.254.1.1", queue_bytes=4096),
        FakeSession("dev2", "169.254.1.2"),
    )
    stalled_ws, lively_ws = RecordingSocket(), RecordingSocket()
    stalled_ws.stall()
    running.attach(stalled)
    running.attach(lively)
    tasks = [
        asyncio.create_task(stalled.sender.run(stalled_ws)),
        asyncio.create_task(lively.sender.run(lively_ws)),
    ]
    for n in range(200):  # far more than the stalled session's queue holds
        tun.inject(ipv4(MANAGER, "169.254.1.1", 17, bytes(200), 40000 + n, 161))
        if n % 10 == 9:
            await asyncio.sleep(0)  # the router reads, as the kernel's queue would drain
    await wait_until(lambda: stalled.counters.drops["queue-full"] > 0)
    poll = ipv4(MANAGER, "169.254.1.2", 17, b"get", 40000, 161)
    tun.inject(poll)
    await asyncio.wait_for(lively_ws.sent.wait(), 5)
    assert lively_ws.frames == [poll]
    assert stalled_ws.frames == []
    assert stalled.sender.outbox.size <= 4096
    for task in tasks:
        task.cancel()


async def test_offload_headers_no_kernel_would_write_are_refused(tun: FakeTun) -> None:
    router = router_for(tun)
    session = FakeSession("dev1", "169.254.1.1", offload=True)
    router.attach(session)
    udp = ipv4("169.254.1.1", SERVER, 17, b"x" * 100, 40000, 514)
    tcp_header_on_udp = struct.pack("<BBHHHH", 1, 1, 0, 1360, 20, 16) + udp
    assert deliver(router, session, PLAIN + udp + tcp_header_on_udp) == 1
    assert tun.written() == [udp]
    assert dict(session.counters.drops) == {"bad-offload": 1}
