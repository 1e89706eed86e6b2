"""The overlay address plan and the rules for handing out device addresses (pure).

169.254.0.0/16 is the overlay. 169.254.0.0/24 belongs to servers and services
(169.254.0.1 is the server). Devices get addresses from 169.254.1.0/24 upward,
never an address ending in .0 or .255 (older stacks treat them as network and
broadcast addresses even inside a /16), and never 169.254.169.254 or
169.254.169.123, the metadata and time services a device in a cloud may need.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Container
from dataclasses import dataclass, field

from overlay.exceptions import ConfigError, PoolExhaustedError

OVERLAY = ipaddress.IPv4Network("169.254.0.0/16")
SERVICE_RANGE = ipaddress.IPv4Network("169.254.0.0/24")
RESERVED = frozenset(
    {ipaddress.IPv4Address("169.254.169.254"), ipaddress.IPv4Address("169.254.169.123")}
)
DEFAULT_POOL = "169.254.1.0-169.254.255.254"


def is_assignable(address: ipaddress.IPv4Address) -> bool:
    """True when the address may be leased to a device."""
    last_octet = int(address) & 0xFF
    return (
        address in OVERLAY
        and address not in SERVICE_RANGE
        and last_octet not in (0, 255)
        and address not in RESERVED
    )


@dataclass(frozen=True)
class AddressPool:
    """An inclusive range of overlay addresses from which device leases are drawn."""

    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.first > self.last:
            raise ConfigError(
                f"address pool {self.first}-{self.last} is empty: first is after last"
            )
        for end in (self.first, self.last):
            if end not in OVERLAY or end in SERVICE_RANGE:
                raise ConfigError(
                    f"address pool end {end} is outside 169.254.1.0-169.254.255.255 "
                    "(169.254.0.0/24 is kept for servers)"
                )
        object.__setattr__(self, "_size", int(self.last) - int(self.first) + 1)

    @classmethod
    def parse(cls, text: str) -> AddressPool:
        """Parse ``169.254.1.0/24`` or ``169.254.1.10-169.254.1.99``."""
        try:
            if "-" in text:
                first, last = (part.strip() for part in text.split("-", 1))
                return cls(ipaddress.IPv4Address(first), ipaddress.IPv4Address(last))
            network = ipaddress.IPv4Network(text.strip(), strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"address pool {text!r} is neither a CIDR nor a range a.b.c.d-e.f.g.h: {exc}"
            ) from None
        return cls(network.network_address, network.broadcast_address)

    @functools.cached_property
    def capacity(self) -> int:
        """How many addresses of the range may be leased: counted, not walked (a /16
        walked address by address held a starting server's loop for a second)."""
        first, last = int(self.first), int(self.last)  # both in OVERLAY, past SERVICE_RANGE

        def ending_in(octet: int) -> int:
            return (last - octet) // 256 - (first - 1 - octet) // 256

        reserved = sum(first <= int(address) <= last for address in RESERVED)
        return self._size - ending_in(0) - ending_in(255) - reserved

    def random(self) -> ipaddress.IPv4Address:
        """Any address of the range: where two nodes that collided search apart."""
        return ipaddress.IPv4Address(int(self.first) + random.randrange(self._size))

    def allocate(
        self, taken: Container[ipaddress.IPv4Address], after: ipaddress.IPv4Address | None = None
    ) -> ipaddress.IPv4Address:
        """Return the first assignable address not in ``taken``.

        The search starts just past ``after`` (the last address handed out) and
        wraps around, so allocating n addresses costs O(n) rather than O(n²).
        """
        start = (
            0
            if after is None or not self.first <= after <= self.last
            else (int(after) - int(self.first) + 1)
        )
        base = int(self.first)
        for step in range(self._size):
            candidate = ipaddress.IPv4Address(base + (start + step) % self._size)
            if is_assignable(candidate) and candidate not in taken:
                return candidate
        raise PoolExhaustedError(f"address pool {self.first}-{self.last} is exhausted")
