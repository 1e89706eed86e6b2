"""When to ping a tunnel's peer, and when it is dead, without I/O.

Liveness follows the H3C keepalive: a ping every ``interval`` seconds keeps NAT
entries fresh, and a peer from which nothing (data, ping or pong) arrived for
``misses`` intervals is dead. :class:`Keepalive` only decides; the caller sends
the ping or closes the socket. Both ends use it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Beat(enum.Enum):
    PING = "ping"
    DEAD = "dead"


@dataclass(slots=True)
class Keepalive:
    """Decide when to ping and when the peer is dead, from times given by the caller."""

    interval: float
    misses: int = 3
    last_heard: float = 0.0

    def heard(self, now: float) -> None:
        """Something arrived from the peer."""
        self.last_heard = now

    def tick(self, now: float) -> Beat:
        """Called every ``interval`` seconds."""
        if now - self.last_heard >= self.interval * self.misses:
            return Beat.DEAD
        return Beat.PING

    @property
    def timeout(self) -> float:
        return self.interval * self.misses
