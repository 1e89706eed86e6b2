"""CoDel (RFC 8289): when to drop from the head of a tunnel's send queue. No I/O.

Why. A queue in front of a slow tunnel fills and stays full: the inner TCP flows
see no loss, only a delay that grows until the queue's byte bound, and every
other packet (a ping, a SIP message) waits behind it. Dropping by a fixed age
hurt throughput at full speed, where a short stall of the process makes a burst
that drains in a millisecond. CoDel tells the two apart: it drops only once
packets have waited longer than ``target`` for a whole ``interval`` (a standing
queue), and then more often, by the inverse square root of the drops so far,
until the flows have slowed down enough.
"""

from __future__ import annotations

import math

TARGET = 0.005  # seconds a packet may wait in a standing queue (RFC 8289)
INTERVAL = 0.1  # seconds the wait must last first: about the round trip of the flows inside


class Codel:
    """The drop decisions of one queue (RFC 8289, section 5)."""

    __slots__ = (
        "count",
        "drop_next",
        "dropping",
        "first_above",
        "interval",
        "last_count",
        "target",
    )

    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        self.target = target
        self.interval = interval
        self.first_above = 0.0  # when the wait will have exceeded target for an interval
        self.dropping = False
        self.count = 0  # drops since dropping began
        self.last_count = 0
        self.drop_next = 0.0

    def drop(self, sojourn: float, now: float) -> bool:
        """Whether to drop the packet at the head, which has waited ``sojourn`` seconds."""
        above = self._above(sojourn, now)
        if self.dropping:
            if not above:
                self.dropping = False
            elif now >= self.drop_next:
                self.count += 1
                self.drop_next = self._next(self.drop_next)
                return True
            return False
        if not above:
            return False
        self.dropping = True
        # Dropping again soon after the last spell: start from about where it ended.
        delta = self.count - self.last_count
        recent = now - self.drop_next < 16 * self.interval
        self.count = delta if delta > 1 and recent else 1
        self.last_count = self.count
        self.drop_next = self._next(now)
        return True

    def _above(self, sojourn: float, now: float) -> bool:
        if sojourn < self.target:
            self.first_above = 0.0
            return False
        if self.first_above == 0.0:
            self.first_above = now + self.interval
            return False
        return now >= self.first_above

    def _next(self, time: float) -> float:
        return time + self.interval / math.sqrt(self.count)
