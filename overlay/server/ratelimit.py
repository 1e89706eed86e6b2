"""Failed authentication, limited per source address (pure; the clock is passed in).

After ``max_failures`` failed attempts from one source within ``window``
seconds, that source is refused with 429 for ``lockout`` seconds without its
credentials being checked: guessing costs the guesser time, not the server
scrypt runs. A success does not reset the count, so a device with the right
password cannot shelter a guesser behind the same NAT for free; the count
simply ages out of the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class FailureLimiter:
    max_failures: int = 10
    window: float = 60.0
    lockout: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until ``source`` may try again; 0 when it may try now."""
        until = self._locked_until.get(source)
        if until is None:
            return 0.0
        if now >= until:
            del self._locked_until[source]
            return 0.0
        return until - now

    def failed(self, source: str, now: float) -> bool:
        """Record a failure; True when it locks the source out."""
        failures = self._failures.setdefault(source, deque())
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) >= self.max_failures:
            self._locked_until[source] = now + self.lockout
            del self._failures[source]
            return True
        return False

    def forget_old(self, now: float) -> None:
        """Drop sources with nothing recent, so the tables stay small under a scan."""
        for source in [s for s, f in self._failures.items() if not f or f[-1] <= now - self.window]:
            del self._failures[source]
        for source in [s for s, until in self._locked_until.items() if until <= now]:
            del self._locked_until[source]
