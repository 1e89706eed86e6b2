"""The default overlay policy, decided per packet without I/O.

From a device: the source must be the device's own overlay address
(anti-spoofing) and the destination must be in the service range
169.254.0.0/24, so devices never reach each other. Protocol v1 carries IPv4
only, and without options: nothing needs them, and a loose source route could
name another device. The management side's flows towards devices are routed to whichever
session owns the destination address.
"""

from __future__ import annotations

import ipaddress

from overlay.addressing import SERVICE_RANGE
from overlay.counters import Drop
from overlay.packet import IPV4_DST, IPV4_SRC


class Policy:
    """Checks for packets that arrive from a device."""

    def __init__(self, service_range: ipaddress.IPv4Network = SERVICE_RANGE) -> None:
        self._mask = int(service_range.netmask)
        self._network = int(service_range.network_address)

    def from_device(self, packet: memoryview | bytes, source: bytes) -> Drop | None:
        """Return why the packet must be dropped, or None to forward it."""
        if packet[0] != 0x45:  # version 4, a 20-byte header
            return Drop.UNSUPPORTED if packet[0] >> 4 != 4 else Drop.IP_OPTIONS
        if packet[IPV4_SRC] != source:
            return Drop.SPOOFED
        if int.from_bytes(packet[IPV4_DST], "big") & self._mask != self._network:
            return Drop.POLICY
        return None
