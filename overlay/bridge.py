"""The I/O loops that both ends run on an open tunnel: receive, keep alive, TUN to WebSocket.

Theory of operation. Three coroutines serve an open tunnel. ``receive`` reads
WebSocket messages: binary frames go to a callback that splits and delivers
their packets, pings are answered, and anything heard feeds the keepalive.
``keep_alive`` pings every interval and returns when the peer has been silent
for three. ``pump`` (the device's sender) drains the TUN until it would block
and sends what it read as one binary frame; awaiting the send is the
backpressure: while the socket is full, packets wait in the TUN's own bounded
queue, where the kernel drops rather than queues without end.

Nothing here logs per packet or per frame: counters only.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from overlay.exceptions import FrameError
from overlay.session import Beat, Counters, Drop, Keepalive
from overlay.tun import Tun
from overlay.wire import split_packets


class WebSocket(Protocol):
    """What the loops need of aiohttp's server and client WebSockets."""

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...
    async def send_bytes(self, data: bytes, compress: int | None = None) -> None: ...
    async def ping(self, message: bytes = b"") -> None: ...
    async def pong(self, message: bytes = b"") -> None: ...
    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


# Bytes the kernel may hold unsent on the outer TCP socket. Beyond this the
# socket is not writable, so senders wait (device) or drop from their bounded
# queue (server) instead of hiding a deep buffer from the inner TCP flows:
# that buffer is what made pings wait ~100 ms under load.
UNSENT_BYTES = 65536


def limit_unsent(sock: Any) -> None:
    """Apply TCP_NOTSENT_LOWAT to the tunnel's outer socket (None: nothing to do)."""
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_BYTES)


_CLOSED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


async def receive(
    ws: WebSocket, on_frame: Callable[[bytes], None], keepalive: Keepalive, counters: Counters
) -> aiohttp.WSMessage:
    """Deliver frames until the peer closes; return the message that ended the loop."""
    loop = asyncio.get_running_loop()
    binary, ping = aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.PING
    while True:
        message = await ws.receive()
        keepalive.heard(loop.time())
        kind = message.type
        if kind is binary:
            on_frame(message.data)
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


def deliver(frame: bytes, tun: Tun, counters: Counters) -> None:
    """Write the packets of a frame from the server to the device's TUN."""
    try:
        packets = split_packets(frame)
    except FrameError:
        counters.drop(Drop.MALFORMED)
        return
    counters.rx_frames += 1
    counters.rx_bytes += len(frame)
    written = 0
    for packet in packets:
        if tun.write(packet):
            written += 1
    counters.rx_packets += written
    if written < len(packets):
        counters.drop(Drop.TUN_FULL, len(packets) - written)


async def pump(tun: Tun, ws: WebSocket, max_message: int, counters: Counters) -> None:
    """Send what the TUN reads, one frame per drained batch, until cancelled."""
    budget = max(max_message - tun.mtu, tun.mtu)
    while True:
        packets = tun.read_batch(budget)
        if not packets:
            await tun.wait_readable()
            continue
        frame = b"".join(packets)
        await ws.send_bytes(frame)
        counters.tx_frames += 1
        counters.tx_packets += len(packets)
        counters.tx_bytes += len(frame)
