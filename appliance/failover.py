"""Which server to try next and how long to wait, without I/O.

Theory of operation. The device knows an ordered list of servers, primary
first. A round tries them in order, starting with the one that last worked;
once a server accepts the tunnel the device stays on it, and it does not switch
back when an earlier server recovers (H3C's behaviour: a switch costs a
reconnect for nothing). Between rounds the device waits, exponentially longer
each time and with full jitter, so that a thousand devices cut off together do
not return together; a tunnel that was up resets the wait.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


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
