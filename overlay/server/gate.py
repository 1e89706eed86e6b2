"""The gate in front of the tunnel endpoint: a cap on connections not yet tunnels, and a deadline.

A connection is *pending* from the moment TLS is up until it becomes a tunnel
(the WebSocket upgrade) or closes. At most ``limit`` connections may be pending:
beyond that a new one is closed at once (``pending-limit``), so a flood of
unauthenticated clients cannot exhaust the server. A pending connection that
has not become a tunnel within ``timeout`` seconds is closed
(``handshake-timeout``), which also ends clients that finish TLS and then send
their request one byte a minute. (The TLS handshake itself has its own
timeout, ``listen.handshake_timeout``, in the event loop.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any


class Gate:
    def __init__(self, limit: int, timeout: float, refusals: Counter[str]) -> None:
        self.limit = limit
        self.timeout = timeout
        self.refusals = refusals
        self._pending: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory whose protocols report to this gate."""
        return lambda: _Watched(factory(), self)

    def settled(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection became a tunnel: it no longer counts as pending."""
        timer = self._pending.pop(transport, None) if transport is not None else None
        if timer is not None:
            timer.cancel()

    def _arrived(self, transport: asyncio.BaseTransport) -> bool:
        if len(self._pending) >= self.limit:
            self.refusals["pending-limit"] += 1
            transport.abort()  # type: ignore[attr-defined]
            return False
        loop = asyncio.get_running_loop()
        self._pending[transport] = loop.call_later(self.timeout, self._expired, transport)
        return True

    def _expired(self, transport: asyncio.BaseTransport) -> None:
        if self._pending.pop(transport, None) is not None:
            self.refusals["handshake-timeout"] += 1
            transport.abort()  # type: ignore[attr-defined]

    def _left(self, transport: asyncio.BaseTransport | None) -> None:
        self.settled(transport)


class _Watched(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; tells the gate when a connection comes and goes."""

    def __init__(self, inner: Any, gate: Gate) -> None:
        self._inner = inner
        self._gate = gate
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._gate._arrived(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate._left(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
