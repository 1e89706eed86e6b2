"""The default overlay policy, decided per packet without I/O.

From a device: the source must be the device's own overlay address
(anti-spoofing) and the destination must be in the service range
169.254.0.0/24, so devices never reach each other. With ``[lan] management``
prefixes, a device may also send to those, but only within a flow that the
management side opened (its replies, :data:`REPLIES_ONLY`): what it opens
itself goes to the service range, where ``[[service]]`` entries may forward it.
Protocol v1 carries IPv4 only, and without options: nothing needs them, and a
loose source route could name another device. The management side's flows
towards devices are routed to whichever session owns the destination address.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable

from overlay.addressing import SERVICE_RANGE
from overlay.counters import Drop
from overlay.packet import IPV4_DST, IPV4_SRC


class Verdict(enum.Enum):
    REPLIES_ONLY = "replies-only"  # to the management LAN: within a flow it opened, or not


REPLIES_ONLY = Verdict.REPLIES_ONLY


class Policy:
    """Checks for packets that arrive from a device."""

    def __init__(
        self,
        service_range: ipaddress.IPv4Network = SERVICE_RANGE,
        management: Iterable[ipaddress.IPv4Network] = (),
    ) -> None:
        self._mask = int(service_range.netmask)
        self._network = int(service_range.network_address)
        self._management = [(int(n.netmask), int(n.network_address)) for n in management]

    def from_device(self, packet: memoryview | bytes, source: bytes) -> Drop | Verdict | None:
        """Return why the packet must be dropped, None to forward it, or
        :data:`REPLIES_ONLY` to forward it only as part of a flow that exists."""
        if packet[0] != 0x45:  # version 4, a 20-byte header
            return Drop.UNSUPPORTED if packet[0] >> 4 != 4 else Drop.IP_OPTIONS
        if packet[IPV4_SRC] != source:
            return Drop.SPOOFED
        destination = int.from_bytes(packet[IPV4_DST], "big")
        if destination & self._mask == self._network:
            return None
        for mask, network in self._management:
            if destination & mask == network:
                return REPLIES_ONLY
        return Drop.POLICY
