"""One open tunnel on the server: its WebSocket, lease, queue, counters and log context.

A session may send some traffic the server refuses; one that keeps sending it
(past its :class:`~overlay.server.budget.TokenBucket`) is closed with 1008 and
counted (``refused-traffic``), since refusing costs the one event loop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import structlog
from aiohttp import web

from overlay import bridge
from overlay.codel import Codel
from overlay.counters import Counters
from overlay.keepalive import Keepalive
from overlay.server.budget import TokenBucket
from overlay.server.leases import Lease
from overlay.server.lifecycle import Lifecycle, State
from overlay.server.router import TURN_PACKETS, Router
from overlay.status import SessionStatus
from overlay.wire import CloseCode, Hello

CLOSE_WAIT = 5.0  # seconds a device has to answer a close frame

log = structlog.get_logger("overlay.session")


class ServerSession:
    """A device's tunnel, from the hello to the close."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        lease: Lease,
        peer: str,
        session_id: str,
        queue_bytes: int,
        max_message: int,
        ping_interval: int,
        keepalive_misses: int,
        codel: Codel,
        refused: TokenBucket,
        closures: Counter[str],
        offload: bool = False,
    ) -> None:
        self.ws = ws
        self.lease = lease
        self.key = (lease.device, lease.vrf)
        self.address_bytes = lease.address.packed
        self.peer = peer
        self.id = session_id
        self.since = time.time()
        self.lifecycle = Lifecycle()
        self.counters = Counters()
        self.sender = bridge.Sender(queue_bytes, max_message, self.counters, codel)
        self.offload = offload  # packets travel behind their virtio-net headers
        self.keepalive = Keepalive(ping_interval, keepalive_misses)
        self.turn_budget = TURN_PACKETS  # the router's count, across this session's frames
        self.refused = refused  # what this device may send that the server refuses
        self.closures = closures  # the node's count of tunnels it closed, by reason
        self.close_code: int | None = None
        self.close_reason: str | None = None  # ours, when the server closed the tunnel
        self.log = log.bind(
            device=lease.device, vrf=lease.vrf, address=str(lease.address), session=session_id
        )

    async def run(self, router: Router[ServerSession], hello: Hello) -> None:
        """Send the hello, then carry packets until either end closes or the device falls silent."""
        await self.ws.send_str(hello.serialize())
        self.lifecycle.advance(State.OPEN)
        self.log.info("tunnel open", peer=self.peer)
        tasks = [
            asyncio.create_task(
                bridge.receive(
                    self.ws,
                    lambda frame: self._from_device(router, frame),
                    self.keepalive,
                    self.counters,
                )
            ),
            asyncio.create_task(self.sender.run(self.ws)),
            asyncio.create_task(bridge.keep_alive(self.ws, self.keepalive)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if tasks[0] in done and isinstance(tasks[0].exception(), _RefusedTooMuch):
            self.closures["refused-traffic"] += 1
            self.log.warning(
                "device keeps sending traffic the server refuses, closing its session",
                drops=dict(self.counters.drops),
            )
            await self.close(CloseCode.POLICY_VIOLATION, "too much refused traffic", wait=0.5)
        elif tasks[2] in done and self.close_code is None:
            self.log.warning(
                "device silent, closing its session", silent_for=self.keepalive.timeout
            )
            await self.close(CloseCode.GOING_AWAY, "keepalive timeout", wait=0.5)
        elif self.close_code is None:
            self.close_code = self.ws.close_code
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.lifecycle.advance(State.CLOSED)
        self.log.info(
            "tunnel closed",
            code=self.close_code,
            reason=self.close_reason,
            **self.counters.as_dict(),
        )

    async def _from_device(self, router: Router[ServerSession], frame: bytes) -> None:
        refused = await router.from_device(self, frame)
        if refused and not self.refused.spend(refused, time.monotonic()):
            raise _RefusedTooMuch

    async def close(self, code: CloseCode, reason: str, wait: float = CLOSE_WAIT) -> None:
        """Close the tunnel with ``code`` (4001 replaced, 1001 going away, …).

        Waits at most ``wait`` seconds for the device to answer the close, then
        drops the connection: a silent device would otherwise hold it for long.
        """
        if self.lifecycle.state in (State.CLOSING, State.CLOSED):
            return
        self.lifecycle.advance(State.CLOSING)
        self.close_code = code
        self.close_reason = reason  # logged once, with the counters, when run() ends
        with contextlib.suppress(Exception):
            async with asyncio.timeout(wait):  # no task of its own, unlike wait_for
                await self.ws.close(code=code, message=reason.encode())

    def status(self, flows: int, lan_address: str | None) -> SessionStatus:
        """This session as ``overlay status`` shows it; ``flows``: its address's flows now;
        ``lan_address``: its routable address ([lan] prefix), if any."""
        return {
            "device": self.lease.device,
            "vrf": self.lease.vrf,
            "address": str(self.lease.address),
            "lan_address": lan_address,
            "peer": self.peer,
            "session": self.id,
            "state": self.lifecycle.state.value,
            "since": self.since,
            "idle": round(time.monotonic() - self.keepalive.last_heard, 1),
            "offload": self.offload,
            "flows": flows,
            **self.counters.as_dict(),
        }


class _RefusedTooMuch(Exception):
    """Ends a session's receiving: its device spent its budget of refused traffic."""
