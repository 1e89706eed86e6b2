"""One tunnel's state, shared by both ends, without I/O.

Theory of operation. A tunnel is CONNECTING until the hello is sent (server) or
received (device), OPEN while it carries packets, CLOSING once either end started
the WebSocket close, and CLOSED after. :class:`Tunnel` allows only the
transitions in ``TRANSITIONS``, so a bug that would, say, reopen a closed
session fails loudly instead of leaking it.

Liveness follows the H3C keepalive: a ping every ``interval`` seconds keeps NAT
entries fresh, and a peer from which nothing (data, ping or pong) arrived for
``misses`` intervals is dead. :class:`Keepalive` only decides; the caller sends
the ping or closes the socket.

The counters are plain integers bumped by the I/O code: the hot path pays one
addition per batch, never a log line.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field


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


class Drop(enum.Enum):
    """Why a packet or frame was dropped; each reason has its own counter."""

    MALFORMED = "malformed"  # a frame that does not split into whole IP packets
    SPOOFED = "spoofed"  # a device sent with a source other than its overlay address
    POLICY = "policy"  # the policy does not allow this destination (device isolation included)
    FLOW_LIMIT = "flow-limit"  # the device address holds as many flows as the firewall allows
    NO_SESSION = "no-session"  # nothing is connected at the destination address
    QUEUE_FULL = "queue-full"  # the tunnel's send queue was full
    STALE = "stale"  # dropped from a standing send queue (CoDel), so that it drains
    TUN_FULL = "tun-full"  # the TUN device refused the write (its queue was full)
    UNSUPPORTED = "unsupported"  # IPv6 or a text frame, which protocol v1 does not carry


@dataclass
class Counters:
    """Traffic at one end of a tunnel: ``rx`` arrived over the WebSocket, ``tx`` left by it."""

    rx_bytes: int = 0
    rx_packets: int = 0
    rx_frames: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_frames: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Counters) -> None:
        """Add ``other``'s counts to these."""
        self.rx_bytes += other.rx_bytes
        self.rx_packets += other.rx_packets
        self.rx_frames += other.rx_frames
        self.tx_bytes += other.tx_bytes
        self.tx_packets += other.tx_packets
        self.tx_frames += other.tx_frames
        self.drops.update(other.drops)

    def drop(self, reason: Drop, count: int = 1) -> None:
        self.drops[reason.value] += count

    def as_dict(self) -> dict[str, object]:
        return {
            "rx_bytes": self.rx_bytes,
            "rx_packets": self.rx_packets,
            "rx_frames": self.rx_frames,
            "tx_bytes": self.tx_bytes,
            "tx_packets": self.tx_packets,
            "tx_frames": self.tx_frames,
            "drops": dict(self.drops),
        }


class InvalidTransition(RuntimeError):
    """A programming error: the state machine was asked for a change it does not allow."""


class Tunnel:
    """The state of one tunnel, with the transitions checked."""

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


class Beat(enum.Enum):
    PING = "ping"
    DEAD = "dead"


@dataclass
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


class Outbox:
    """A queue of packets waiting for a tunnel, bounded in bytes and in time.

    Bounded on purpose: a slow device must cost drops on its own tunnel, not
    memory on the server or delay for everyone (an unbounded queue made ping
    under load 25 times the direct path's). The byte bound takes bursts; the
    arrival times let the sender drop from the head (:mod:`overlay.codel`) so that
    a standing queue adds no more than a few milliseconds, whatever the rate.
    """

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
