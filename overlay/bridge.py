"""A tunnel's send queue, and the I/O loops the device agent runs on an open tunnel.

Theory of operation. A :class:`Sender` holds what waits for a tunnel in a queue
bounded in bytes and cuts it into frames of as many packets as are waiting;
while the socket is busy the queue fills, CoDel drops what waited too long
(``stale``), and beyond its bound packets are dropped and counted
(``queue-full``) rather than delayed. Both ends have one per tunnel: the
server's router feeds its sessions' (:mod:`overlay.server.sessions`, which
write the frames to their transport themselves), the agent's TUN its own.

On the device, three coroutines serve an open tunnel. ``receive`` reads
WebSocket messages: binary frames go to a callback that delivers their
packets, pings are answered, and anything heard feeds the keepalive.
``keep_alive`` pings every interval and returns when the peer has been silent
for three. ``pump`` moves what the TUN reads into the Sender as soon as it
arrives, so that neither the TUN's queue nor ours hides a long delay. With
offload (:mod:`overlay.offload`) packets travel behind their virtio-net
headers, as the TUN reads and writes them; without, the headers stay on this host.

Nothing here logs per packet or per frame: counters only.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp

from overlay.codel import Codel
from overlay.counters import Counters, Drop
from overlay.exceptions import FrameError
from overlay.keepalive import Beat, Keepalive
from overlay.offload import HEADER_SIZE, PLAIN, OffloadError, plain
from overlay.outbox import Outbox
from overlay.tun import TunDevice
from overlay.wire import split_packets


class WebSocket(Protocol):
    """What the loops need of aiohttp's server and client WebSockets."""

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...
    async def send_bytes(self, data: bytes, compress: int | None = None) -> None: ...
    async def ping(self, message: bytes = b"") -> None: ...
    async def pong(self, message: bytes = b"") -> None: ...
    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


# What may wait beyond a tunnel's own queue: unsent in the kernel (TCP_NOTSENT_LOWAT)
# and in the event loop's transport. Kept small so that packets wait in the queue,
# where CoDel sees them and drops, and not in buffers that only grow the delay:
# 64 KiB in the kernel and aiohttp's 256 KiB between waits for the transport held
# pings ~25 ms behind a 200 Mbit/s bottleneck.
UNSENT_BYTES = 16384
# The most one frame carries: one 64 KiB segment with offload, ~46 packets without.
FRAME_BYTES = 65536
# What may wait for one tunnel by default: four 64 KiB segments; CoDel keeps the
# standing part of it to a few milliseconds.
QUEUE_BYTES = 262144


def bound_kernel_send_buffer(sock: Any) -> None:
    """Let at most UNSENT_BYTES wait unsent in the kernel. On a listening socket this
    holds for every connection it accepts."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_BYTES)


def bound_send_buffers(transport: Any, inherited: bool = False) -> None:
    """Keep the kernel's and the transport's share of a tunnel's sending small
    (None: nothing to do); ``inherited``: the socket has the kernel's bound from its
    listener already. The WebSocket writer must wait for the transport after
    every frame as well (its limit 0), or it fills the transport regardless."""
    if transport is None:
        return
    sock = None if inherited else transport.get_extra_info("socket")
    if sock is not None:
        bound_kernel_send_buffer(sock)
    transport.set_write_buffer_limits(high=UNSENT_BYTES)


def wait_for_transport_after_every_frame(ws: aiohttp.ClientWebSocketResponse) -> None:
    """What the server gets from ``writer_limit=0``, for a client WebSocket: aiohttp takes
    that argument for server WebSockets only (PR #9572), so this sets the writer's private
    limit, here and nowhere else. tests/middle/test_bridge.py fails if aiohttp renames it."""
    ws._writer._limit = 0


_CLOSED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


async def receive(
    ws: WebSocket,
    on_frame: Callable[[bytes], Awaitable[None]],
    keepalive: Keepalive,
    counters: Counters,
) -> aiohttp.WSMessage:
    """Deliver frames until the peer closes; return the message that ended the loop."""
    loop = asyncio.get_running_loop()
    binary, ping = aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.PING
    while True:
        message = await ws.receive()
        keepalive.heard(loop.time())
        kind = message.type
        if kind is binary:
            await on_frame(message.data)
        elif kind is ping:
            await ws.pong(message.data)
        elif kind in _CLOSED:
            return message
        elif kind is aiohttp.WSMsgType.TEXT:
            counters.drop(Drop.UNSUPPORTED)


async def keep_alive(ws: WebSocket, keepalive: Keepalive) -> None:
    """Ping every interval; return once the peer missed ``keepalive.misses`` intervals."""
    loop = asyncio.get_running_loop()
    keepalive.heard(loop.time())
    while True:
        await asyncio.sleep(keepalive.interval)
        if keepalive.tick(loop.time()) is Beat.DEAD:
            return
        await ws.ping()


async def deliver(frame: bytes, tun: TunDevice, counters: Counters, offload: bool) -> None:
    """Write the packets of a frame from the server to the device's TUN."""
    try:
        packets = split_packets(frame, HEADER_SIZE if offload else 0)
    except FrameError:
        counters.drop(Drop.MALFORMED)
        return
    counters.rx_frames += 1
    counters.rx_bytes += len(frame)
    written = 0
    write = tun.write
    for packet in packets:
        if write(packet) if offload else write(PLAIN, packet):
            written += 1
    counters.rx_packets += written
    if written < len(packets):
        counters.drop(Drop.TUN_FULL, len(packets) - written)


class Sender:
    """What waits for one tunnel, bounded in bytes and time, cut into frames.

    The agent sends with :meth:`run`; the server's sessions write :meth:`next_frame`
    to their transport themselves whenever it has room."""

    __slots__ = ("_wake", "codel", "counters", "max_message", "outbox")

    def __init__(
        self, queue_bytes: int, max_message: int, counters: Counters, codel: Codel
    ) -> None:
        self.outbox = Outbox(queue_bytes)
        self.max_message = max_message
        self.counters = counters
        self.codel = codel
        self._wake: asyncio.Event | None = None  # run()'s, while it runs

    def put_read(self, record: bytes, now: float, offload: bool) -> bool:
        """Queue what a TUN read (a header and a packet): whole with offload, else as
        the complete packets it stands for. False when it could not be made so
        (counted ``malformed``)."""
        if offload:
            self.put(record, now)
            return True
        try:
            packets = plain(record)
        except OffloadError:
            self.counters.drop(Drop.MALFORMED)
            return False
        for packet in packets:
            self.put(packet, now)
        return True

    def put(self, packet: bytes | memoryview, now: float) -> None:
        """Queue a packet that arrived at ``now`` (never blocks); drop and count it
        when the queue is full."""
        if self.outbox.put(packet, now):
            if self._wake is not None:
                self._wake.set()
        else:
            self.counters.drop(Drop.QUEUE_FULL)

    def next_frame(self, now: float) -> list[bytes | memoryview]:
        """The packets of the next frame, as many as fit, after CoDel dropped what
        waited too long; empty when nothing waits. Counted as sent."""
        outbox, counters, codel = self.outbox, self.counters, self.codel
        while outbox and codel.drop(now - outbox.oldest, now):
            outbox.drop_oldest()
            counters.drop(Drop.STALE)
        if not outbox:
            return []
        packets = outbox.take(min(self.max_message, FRAME_BYTES))
        counters.tx_frames += 1
        counters.tx_packets += len(packets)
        counters.tx_bytes += sum(map(len, packets))
        return packets

    async def run(self, ws: WebSocket) -> None:
        """Send what is queued, as many packets per frame as fit, until cancelled."""
        outbox, wake = self.outbox, asyncio.Event()
        self._wake = wake
        clock = time.monotonic  # as the pump's arrival times
        try:
            while True:
                while outbox:
                    packets = self.next_frame(clock())
                    if packets:
                        await ws.send_bytes(b"".join(packets))
                await wake.wait()
                wake.clear()
        finally:
            self._wake = None


async def pump(tun: TunDevice, ws: WebSocket, sender: Sender) -> None:
    """Move what the TUN reads into ``sender`` as it arrives, and send it, until
    cancelled: with the headers when the TUN's offload is on, else complete packets."""
    loop = asyncio.get_running_loop()
    offload, put_read = tun.offload, sender.put_read

    def readable() -> None:
        now = time.monotonic()
        for record in tun.read_batch(sender.max_message):
            put_read(record, now, offload)

    loop.add_reader(tun.fd, readable)
    try:
        await sender.run(ws)
    finally:
        loop.remove_reader(tun.fd)
