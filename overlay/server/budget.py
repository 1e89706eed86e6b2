"""A token bucket (no I/O): how much of something a device may spend, refilled over time.

The server gives every session one for the packets it refuses (spoofed, not
allowed, past the flow limit, malformed): a device may send some refused
traffic (a misconfigured service, a burst of broadcasts), but one that keeps
sending it is closed (1008) and counted, because each refused packet still
costs the server's one event loop the work of refusing it.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def spend(self, count: float, now: float) -> bool:
        """Take ``count`` tokens; False when the bucket ran dry (it stays at zero)."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate) - count
        self.last = now
        if self.tokens < 0:
            self.tokens = 0
            return False
        return True
