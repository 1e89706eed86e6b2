"""``overlay capture``: what the router forwards for a device, both directions, as a pcap stream.

A :class:`Tap` sits on the router only while a capture runs; the router then
offers it every packet it forwards (after the policy: what the device really
sent and got). The tap queues copies up to ``QUEUE_BYTES`` and counts what it
had to drop rather than slow the router or grow without bound behind a reader
that stalled (a count bound let 10,000 segments of 64 KiB pile up). The control
socket streams the tap as a pcap file (``GET
/capture?device=ID&count=N&seconds=S``) until the count or the time is reached
or the reader goes away (seen within a second even when nothing is captured: a
forgotten capture would hold the server's shutdown). The tap is in place
before the file header is sent, so whoever has the header (a script starting
a capture, then traffic) misses nothing that follows."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from typing import Any

import structlog
from aiohttp import web

from overlay import pcap
from overlay.control import Handler
from overlay.server.router import Router
from overlay.server.store import Store

QUEUE_BYTES = 16 << 20
LOOK = 1.0  # seconds between looks at whether the reader of a quiet capture is still there

log = structlog.get_logger("overlay.capture")


class Tap:
    """One running capture: copies of the packets to or from ``addresses`` (None: all)."""

    def __init__(self, addresses: frozenset[bytes] | None) -> None:
        self.addresses = addresses
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.size = 0  # bytes queued
        self.dropped = 0

    def offer(self, address: bytes, packet: bytes | memoryview) -> None:
        if self.addresses is not None and address not in self.addresses:
            return
        if self.size + len(packet) > QUEUE_BYTES:
            self.dropped += 1
            return
        self.size += len(packet)
        self.queue.put_nowait((time.time(), bytes(packet)))

    async def get(self) -> tuple[float, bytes]:
        stamp, packet = await self.queue.get()
        self.size -= len(packet)
        return stamp, packet


def capture_handler(router: Router[Any], store: Store) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        device = request.query.get("device")
        addresses = None
        if device is not None:
            addresses = frozenset(
                ipaddress.IPv4Address(lease.address).packed
                for lease in store.all()
                if lease.device == device
            )
            if not addresses:
                raise web.HTTPNotFound(text=f"device {device!r} has no lease")
        count = int(request.query.get("count", "0")) or None
        seconds = float(request.query.get("seconds", "0")) or None
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.tcpdump.pcap"})
        await response.prepare(request)
        tap = Tap(addresses)
        written = 0
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        # tapped before the file header: whoever has it misses no packet
        with router.tapped(tap), contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            await response.write(pcap.file_header())
            while count is None or written < count:
                left = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if left is not None and left <= 0:
                    break
                try:
                    stamp, packet = await asyncio.wait_for(tap.get(), min(left or LOOK, LOOK))
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break  # the reader went away while nothing was captured
                    continue
                await response.write(pcap.record(stamp, packet))
                written += 1
        log.info("capture ended", device=device, packets=written, dropped=tap.dropped)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    return handle
