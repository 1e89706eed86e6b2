"""One open tunnel on the server: its connection, lease, queue, counters and log context.

Theory of operation. Once the endpoint has upgraded the request, the session is
the connection's protocol: no task, no message queue, nothing of aiohttp's
request stays. Bytes arrive in :meth:`ServerSession.data_received` and go
through aiohttp's own (C) WebSocket reader, which hands each message to the
session at once: the packets of a binary frame go to the router and the TUN in
the same callback, a ping is answered, a close is answered and ends the
connection. What the router reads from the TUN for this device waits in the
:class:`~overlay.bridge.Sender` only until :meth:`flush`, at the end of the
router's batch; it waits longer (and CoDel and the byte bound apply) only while
the transport pushes back (``pause_writing``). The node's :class:`~overlay.server.wheel.Wheel`
calls :meth:`beat` every ping interval: one timer for all tunnels.

A session may send some traffic the server refuses; one that keeps sending it
(past its :class:`~overlay.server.budget.TokenBucket`) is closed with 1008 and
counted (``refused-traffic``), since refusing costs the one event loop too.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import WSMessage, WSMsgType
from aiohttp._websocket.models import WSMessageTextBytes
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.http_websocket import WebSocketError

from overlay import bridge
from overlay.codel import Codel
from overlay.counters import Counters, Drop
from overlay.keepalive import Beat, Keepalive
from overlay.server.budget import TokenBucket
from overlay.server.leases import Lease
from overlay.server.lifecycle import Lifecycle, State
from overlay.server.router import TURN_PACKETS, Router
from overlay.status import SessionStatus
from overlay.wire import CloseCode, Hello, Opcode, close_payload, frame_header

CLOSE_WAIT = 5.0  # seconds a device has to answer a close frame
NO_STATUS = 1005  # the close code of a close frame that gave none
ABNORMAL = 1006  # the close code of a connection that ended without a close frame

log = structlog.get_logger("overlay.session")


class _Inbox(WebSocketDataQueue):
    """Where aiohttp's WebSocket reader puts each message: straight into the session.

    aiohttp's queue buffers messages for a task that awaits them; there is no
    such task here. (``_size`` and ``_limit`` are what the reader looks at to
    stall a full queue: this one is never full.)"""

    __slots__ = ("_session",)
    _size = 0
    _limit = 0

    def __init__(self, session: ServerSession) -> None:
        self._session = session

    def feed_data(self, data: WSMessage | WSMessageTextBytes, size: int) -> None:
        self._session._message(data)

    def set_exception(self, exc: BaseException, exc_cause: Any = None) -> None:
        self._session._broken(exc)

    def feed_eof(self) -> None:
        pass


class ServerSession(asyncio.Protocol):
    """A device's tunnel, from the hello to the close."""

    __slots__ = (
        "_abort",
        "_closed",
        "_ended",
        "_frames",
        "_index",
        "_paused",
        "_reader",
        "_records",
        "_router",
        "_transport",
        "_turning",
        "address_bytes",
        "close_code",
        "close_reason",
        "closures",
        "counters",
        "id",
        "keepalive",
        "key",
        "lease",
        "lifecycle",
        "offload",
        "peer",
        "refused",
        "sender",
        "since",
        "turn_budget",
    )

    def __init__(
        self,
        router: Router[ServerSession],
        ended: Callable[[ServerSession], None],
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
        self.keepalive = Keepalive(ping_interval, keepalive_misses, time.monotonic())
        self.turn_budget = TURN_PACKETS  # the router's count, across this session's frames
        self.refused = refused  # what this device may send that the server refuses
        self.closures = closures  # the node's count of tunnels it closed, by reason
        self.close_code: int | None = None
        self.close_reason: str | None = None  # ours, when the server closed the tunnel
        self._router = router
        self._ended = ended  # the node forgets the session
        self._transport: asyncio.Transport | None = None
        self._reader = WebSocketReader(_Inbox(self), max_message, False, False)
        self._frames: deque[bytes] | None = None  # binary frames waiting for their turn
        self._records: list[memoryview] | None = None  # the frame being delivered
        self._index = 0  # and how far
        self._paused = False  # the transport pushes back
        self._turning = False  # the budget is spent: the next turn goes on delivering
        self._closed: asyncio.Future[None] | None = None  # for those who await the end
        self._abort: asyncio.TimerHandle | None = None  # when a close goes unanswered

    @property
    def log(self) -> Any:
        """The session's logger, with its device, VRF, address and id: bound when it
        logs (rarely), rather than held by every idle tunnel."""
        lease = self.lease
        return log.bind(
            device=lease.device, vrf=lease.vrf, address=str(lease.address), session=self.id
        )

    def take(self, transport: asyncio.Transport, early: bytes) -> None:
        """Serve ``transport`` from now on; ``early``: what the device sent after its
        request, before this took over."""
        self._transport = transport
        transport.set_protocol(self)
        bridge.bound_send_buffers(transport, inherited=True)  # listen_for_tunnels
        if early:
            self.data_received(early)

    def open(self, hello: Hello) -> None:
        """Send the hello: the tunnel carries packets from now on."""
        if self.lifecycle.state is not State.CONNECTING:  # ended while the endpoint waited
            return
        self._write(Opcode.TEXT, hello.serialize().encode())
        self.lifecycle.advance(State.OPEN)
        self.log.info("tunnel open", peer=self.peer)
        self.flush()  # what the router queued for it meanwhile

    # The connection's side.

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)
        self._deliver()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort is not None:
            self._abort.cancel()
        if self.close_code is None:
            self.close_code = ABNORMAL
        self._frames = None
        self._records = None
        self.lifecycle.advance(State.CLOSED)
        self.log.info(
            "tunnel closed",
            code=self.close_code,
            reason=self.close_reason,
            **self.counters.as_dict(),
        )
        self._ended(self)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # Messages, as aiohttp's reader cuts them.

    def _message(self, message: WSMessage | WSMessageTextBytes) -> None:
        self.keepalive.heard(time.monotonic())
        kind = message.type
        if kind is WSMsgType.BINARY:
            if self.lifecycle.state is not State.CLOSING:  # a closing tunnel carries nothing
                frames = self._frames
                if frames is None:
                    frames = self._frames = deque()
                frames.append(message.data)
        elif kind is WSMsgType.PING:
            self._write(Opcode.PONG, message.data)
        elif kind is WSMsgType.CLOSE:
            self._peer_closed(message.data)
        elif kind is WSMsgType.TEXT:
            self.counters.drop(Drop.UNSUPPORTED)

    def _broken(self, exc: BaseException) -> None:
        """The reader refused what the device sent (too big, not WebSocket…)."""
        code = exc.code if isinstance(exc, WebSocketError) else CloseCode.PROTOCOL_ERROR
        self._frames = None
        self._records = None
        self.begin_close(code, str(exc))

    def _peer_closed(self, code: int) -> None:
        if self.lifecycle.state is State.CLOSING:  # the answer to our close
            self._end()
            return
        self.close_code = code or NO_STATUS
        if self.lifecycle.state is not State.CLOSED:
            self.lifecycle.advance(State.CLOSING)  # and echo its code, if it gave one
            self._write(Opcode.CLOSE, close_payload(code, "") if code else b"")
        self._end()

    def _deliver(self) -> None:
        """Deliver waiting frames until this turn's budget is spent; then stop reading
        the socket and go on at the next turn."""
        if self._turning:  # the next turn goes on from here
            return
        router = self._router
        while self._records is not None or self._frames:
            if self.turn_budget <= 0:
                self._turning = True
                if self._transport is not None:
                    self._transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._next_turn)
                return
            records = self._records
            if records is None:
                records = router.split(self, self._frames.popleft())  # type: ignore[union-attr]
                if records is None:
                    if not self._refuse(1):
                        return
                    continue
                self._records, self._index = records, 0
            self._index, refused = router.from_device(self, records, self._index)
            if refused and not self._refuse(refused):
                return
            if self._index == len(records):
                self._records = None
        self._frames = None  # all delivered: an idle tunnel holds no queue

    def _next_turn(self) -> None:
        self._turning = False
        self.turn_budget = TURN_PACKETS
        self._deliver()
        transport = self._transport
        if not self._turning and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _refuse(self, count: int) -> bool:
        """Spend ``count`` of the refused-traffic budget; False when it is gone and the
        tunnel closes (1008)."""
        if self.refused.spend(count, time.monotonic()):
            return True
        self.closures["refused-traffic"] += 1
        self.log.warning(
            "device keeps sending traffic the server refuses, closing its session",
            drops=dict(self.counters.drops),
        )
        self._frames = None
        self._records = None
        self.begin_close(CloseCode.POLICY_VIOLATION, "too much refused traffic", wait=0.5)
        return False

    # Sending.

    def flush(self) -> None:
        """Send what waits in the sender, a frame at a time, while the transport takes it."""
        sender, clock = self.sender, time.monotonic
        while not self._paused and self.lifecycle.state is State.OPEN:
            packets = sender.next_frame(clock())
            if not packets:
                return
            size = sum(map(len, packets))
            self._transport.write(  # type: ignore[union-attr]  # OPEN: it has one
                b"".join([frame_header(Opcode.BINARY, size), *packets])
            )

    def _write(self, opcode: Opcode, payload: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(frame_header(opcode, len(payload)) + payload)

    def beat(self, now: float) -> bool:
        """The keepalive's turn (from the node's wheel): ping, or close a silent device.
        False when the session needs no further beats."""
        state = self.lifecycle.state
        if state is State.CONNECTING:
            return True
        if state is not State.OPEN:
            return False
        if self.keepalive.tick(now) is Beat.DEAD:
            self.log.warning(
                "device silent, closing its session", silent_for=self.keepalive.timeout
            )
            self.begin_close(CloseCode.GOING_AWAY, "keepalive timeout", wait=0.5)
            return False
        self._write(Opcode.PING, b"")
        return True

    # Closing.

    def begin_close(self, code: int, reason: str, wait: float = CLOSE_WAIT) -> None:
        """Send a close frame with ``code`` (4001 replaced, 1001 going away, …) and drop
        the connection when the device has not answered within ``wait`` seconds: a
        silent device would otherwise hold it for long."""
        if self.lifecycle.state in (State.CLOSING, State.CLOSED):
            return
        self.lifecycle.advance(State.CLOSING)
        self.close_code = code
        self.close_reason = reason  # logged once, with the counters, at the end
        self._write(Opcode.CLOSE, close_payload(code, reason))
        if self._transport is None:
            return
        self._abort = asyncio.get_running_loop().call_later(wait, self._transport.abort)

    async def close(self, code: CloseCode, reason: str, wait: float = CLOSE_WAIT) -> None:
        """Close the tunnel (:meth:`begin_close`) and return once it has ended."""
        self.begin_close(code, reason, wait)
        if self.lifecycle.state is State.CLOSED or self._transport is None:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed)

    def _end(self) -> None:
        if self._transport is not None:
            self._transport.close()

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
