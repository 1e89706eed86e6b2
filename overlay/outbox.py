"""What waits for a tunnel, bounded in bytes, with arrival times for CoDel (no I/O)."""

from __future__ import annotations

from collections import deque


class Outbox:
    """A queue of packets waiting for a tunnel, bounded in bytes and in time.

    Bounded on purpose: a slow device must cost drops on its own tunnel, not
    memory on the server or delay for everyone (an unbounded queue made ping
    under load 25 times the direct path's). The byte bound takes bursts; the
    arrival times let the sender drop from the head (:mod:`overlay.codel`) so that
    a standing queue adds no more than a few milliseconds, whatever the rate.
    """

    __slots__ = ("_packets", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._packets: deque[tuple[float, bytes | memoryview]] = deque()

    def __len__(self) -> int:
        return len(self._packets)

    def put(self, packet: bytes | memoryview, now: float) -> bool:
        """Queue a packet that arrived at ``now``; False (and nothing queued) when it
        would pass the limit."""
        if self.size + len(packet) > self.limit:
            return False
        self._packets.append((now, packet))
        self.size += len(packet)
        return True

    @property
    def oldest(self) -> float:
        """When the packet at the head arrived (the queue must not be empty)."""
        return self._packets[0][0]

    def drop_oldest(self) -> None:
        self.size -= len(self._packets.popleft()[1])

    def take(self, max_bytes: int) -> list[bytes | memoryview]:
        """Take packets from the front, at most ``max_bytes`` together (at least one)."""
        taken: list[bytes | memoryview] = []
        size = 0
        packets = self._packets
        while packets and (not taken or size + len(packets[0][1]) <= max_bytes):
            packet = packets.popleft()[1]
            taken.append(packet)
            size += len(packet)
        self.size -= size
        return taken
