"""Which server to try next and how long to wait, without I/O.

Theory of operation. The device knows an ordered list of servers, primary
first. A round tries them in order, starting with the one that last worked;
once a server accepts the tunnel the device stays on it, and it does not switch
back when an earlier server recovers (H3C's behaviour: a switch costs a
reconnect for nothing). Between rounds the device waits, exponentially longer
each time and with full jitter, so that a thousand devices cut off together do
not return together; a tunnel that was up resets the wait. Some endings change
the wait (:func:`after_close`, :func:`after_refusal`): a server going away
(1001) is tried again at once, once; a device replaced by a newer session of
itself (4001) or removed (4003), or whose credentials were refused, waits the
longest time instead of fighting the server.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterator

from overlay.wire import CloseCode


def backoff(
    min_delay: float,
    max_delay: float,
    factor: float = 2.0,
    rand: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield waits uniformly drawn in [min_delay, cap], the cap doubling up to ``max_delay``."""
    cap = min_delay
    while True:
        yield min_delay + rand() * (cap - min_delay)
        cap = min(cap * factor, max_delay)


class ServerOrder:
    """The list of servers and the one the device currently prefers."""

    def __init__(self, servers: list[str]) -> None:
        if not servers:
            raise ValueError("at least one server is needed")
        self.servers = servers
        self.current = 0

    def round(self) -> list[str]:
        """The servers to try now, the preferred one first, then the rest in configured order."""
        return self.servers[self.current :] + self.servers[: self.current]

    def connected(self, server: str) -> None:
        """Remember the server that accepted us: it stays preferred (no switch-back)."""
        self.current = self.servers.index(server)


class After(enum.Enum):
    """How soon to try again after a tunnel ended or an attempt was refused."""

    AT_ONCE = "at once"  # the server is going away (1001), or the device itself reconfigured
    BACKOFF = "backoff"  # the usual jittered wait
    LONGEST = "longest"  # replaced (4001), removed (4003), refused credentials (401/403):
    #                      wait the longest backoff rather than fight the server


def after_close(code: int | None) -> After:
    """What to do after an open tunnel ended with close ``code`` (None: no close frame).

    After 1001 the device tries the same server again at once; when that one
    attempt fails, the round moves on to the next servers as usual.
    """
    if code == CloseCode.GOING_AWAY:
        return After.AT_ONCE
    if code in (CloseCode.REPLACED, CloseCode.REMOVED, CloseCode.POLICY_VIOLATION):
        return After.LONGEST
    return After.BACKOFF


def after_refusal(status: int) -> After:
    """What to do after the server refused the upgrade with HTTP ``status``."""
    return After.LONGEST if status in (401, 403) else After.BACKOFF
