"""Failed authentication, limited per source address (pure; the clock is passed in).

After ``max_failures`` failed attempts from one source within ``window``
seconds, that source is refused with 429 for ``lockout`` seconds without its
credentials being checked: guessing costs the guesser time, not the server
scrypt runs. A success does not reset the count, so a device with the right
password cannot shelter a guesser behind the same NAT for free; the count
simply ages out of the window.

Checks under way count like failures until they end: a source with
``max_failures`` attempts being checked at once gets 429 for the next, so
concurrent guesses cannot all slip past the count before the first fails (200
at once were all checked). The tables are bounded (``max_sources``, the oldest
forgotten first) and :meth:`forget_old` runs on a timer, so a scan from many
addresses costs a bounded amount of memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

V = TypeVar("V")

MAX_SOURCES = 100_000
BUSY_RETRY = 1.0  # seconds a source with max_failures checks under way waits


@dataclass
class FailureLimiter:
    max_failures: int = 10
    window: float = 60.0
    lockout: float = 60.0
    max_sources: int = MAX_SOURCES
    _failures: dict[str, tuple[float, ...]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    _checking: Counter[str] = field(default_factory=Counter)

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until ``source`` may try again; 0 when it may try now."""
        until = self._locked_until.get(source)
        if until is not None:
            if now < until:
                return until - now
            del self._locked_until[source]
        if self._checking[source] + len(self._recent(source, now)) >= self.max_failures:
            return BUSY_RETRY
        return 0.0

    def checking(self, source: str) -> None:
        """A check of ``source``'s credentials starts."""
        self._checking[source] += 1

    def checked(self, source: str) -> None:
        """That check ended (call :meth:`failed` too when it failed)."""
        self._checking[source] -= 1
        if not self._checking[source]:
            del self._checking[source]

    def failed(self, source: str, now: float) -> bool:
        """Record a failure; True when it locks the source out."""
        failures = (*self._recent(source, now), now)
        if len(failures) >= self.max_failures:
            self._failures.pop(source, None)
            _bounded_set(self._locked_until, source, now + self.lockout, self.max_sources)
            return True
        _bounded_set(self._failures, source, failures, self.max_sources)
        return False

    def forget_old(self, now: float) -> None:
        """Drop sources with nothing recent, so the tables stay small under a scan."""
        for source in [s for s, f in self._failures.items() if f[-1] <= now - self.window]:
            del self._failures[source]
        for source in [s for s, until in self._locked_until.items() if until <= now]:
            del self._locked_until[source]

    def _recent(self, source: str, now: float) -> tuple[float, ...]:
        failures = self._failures.get(source, ())
        return tuple(t for t in failures if t > now - self.window)


def _bounded_set(table: dict[str, V], key: str, value: V, limit: int) -> None:
    """Set ``key``, as the newest entry; past ``limit`` entries forget the oldest."""
    table.pop(key, None)
    table[key] = value
    if len(table) > limit:
        del table[next(iter(table))]
