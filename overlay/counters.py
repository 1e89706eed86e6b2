"""What one end of a tunnel carried and dropped, without I/O.

The counters are plain integers bumped by the I/O code: the hot path pays one
addition per batch, never a log line. Every drop has a reason, and every reason
its own counter, so an operator sees why a packet went missing.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from overlay.status import Traffic


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
    IP_OPTIONS = "ip-options"  # an IPv4 header with options (source routes…) from a device
    BAD_OFFLOAD = "bad-offload"  # an offload header an honest kernel would not have written


@dataclass(slots=True)
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

    def as_dict(self) -> Traffic:
        return {
            "rx_bytes": self.rx_bytes,
            "rx_packets": self.rx_packets,
            "rx_frames": self.rx_frames,
            "tx_bytes": self.tx_bytes,
            "tx_packets": self.tx_packets,
            "tx_frames": self.tx_frames,
            "drops": dict(self.drops),
        }
