"""One timer for the keepalive of every tunnel, without I/O.

A timer per tunnel (or a task sleeping per tunnel) costs a heap entry and a
wake-up each; with 10,000 idle tunnels that is 10,000 wake-ups every ping
interval, each on its own turn of the loop. :class:`Wheel` files each tunnel
under the whole second its next beat is due, and one task a second takes what
is due: the same beats, one wake-up.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

T = TypeVar("T")


class Wheel(Generic[T]):
    """Items due at whole seconds; :meth:`due` hands over those whose second has come."""

    __slots__ = ("_last", "_slots")

    def __init__(self, now: float) -> None:
        self._slots: dict[int, list[T]] = {}
        self._last = math.floor(now)  # every second up to this one has been handed over

    def __len__(self) -> int:
        return sum(map(len, self._slots.values()))

    def schedule(self, item: T, at: float) -> None:
        """Hand ``item`` over at the first :meth:`due` at or after ``at``."""
        second = max(math.ceil(at), self._last + 1)
        slot = self._slots.get(second)
        if slot is None:
            self._slots[second] = [item]
        else:
            slot.append(item)

    def due(self, now: float) -> list[T]:
        """What is due by ``now``, in the order it fell due; each item once."""
        until = math.floor(now)
        taken: list[T] = []
        if until - self._last > len(self._slots):  # a long pause: visit the slots there are
            for second in sorted(s for s in self._slots if s <= until):
                taken += self._slots.pop(second)
        else:
            for second in range(self._last + 1, until + 1):
                taken += self._slots.pop(second, ())
        self._last = max(self._last, until)
        return taken
