"""A server session's states, without I/O.

Theory of operation. A session is CONNECTING until the hello is sent, OPEN while
it carries packets, CLOSING once either end started the WebSocket close, and
CLOSED after. :class:`Lifecycle` allows only the transitions in ``TRANSITIONS``, so
a bug that would, say, reopen a closed session fails loudly instead of leaking
it. (The agent's tunnel has states of its own, with reconnects and backoff:
:class:`appliance.tunnel.TunnelState`.)
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.CONNECTING: frozenset({State.OPEN, State.CLOSING, State.CLOSED}),
    State.OPEN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A programming error: the state machine was asked for a change it does not allow."""


class Lifecycle:
    """The state of one session, with the transitions checked."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.CONNECTING

    def advance(self, new: State) -> bool:
        """Move to ``new``; return False when already there (closing twice is harmless)."""
        if new is self.state:
            return False
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {new.value}")
        self.state = new
        return True
