"""The management LAN's view of the overlay: the routable pool and the service entries. Pure.

``[lan] prefix`` maps the device range of the overlay one to one onto a
routable prefix, as the Axis connector's IP pool: the overlay block of the
same size that holds the whole pool is translated, host bits kept, so
169.254.1.7 is 198.18.129.7 under 198.18.128.0/17. The translation is the
kernel's (nftables prefix NAT, :func:`ruleset`): flows that the LAN opens
towards a device's LAN address reach the TUN with the device's overlay
address as destination and the LAN host's own address as source, so the
firewall judges the real source. The device sends its replies into the
tunnel because the hello pushes the ``[lan] management`` prefixes, which the
agent routes into its TUN (docs/protocol.md, "Routes"); conntrack turns the
reply's source back into the LAN address.

``[[service]]`` entries send what devices address to a port of the server's
overlay address (syslog, NTP…) to a host on the LAN instead, with the source
translated to the device's LAN address (or, without a prefix, to the node's).
The firewall has judged each such flow before the kernel translates it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from overlay.addressing import OVERLAY, SERVICE_RANGE, AddressPool
from overlay.exceptions import ConfigError

TABLE = "overlay_lan"  # the node's nftables table (ip family); nothing else is touched
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Service:
    """A port of the server's overlay address, served by a host on the LAN."""

    protocol: str
    port: int
    host: ipaddress.IPv4Address
    host_port: int
    name: str = ""

    def describe(self) -> str:
        return f"{self.protocol}/{self.port} -> {self.host}:{self.host_port}"


@dataclass(frozen=True)
class Lan:
    """``[lan]`` and ``[[service]]``: what the management network sees of the overlay."""

    prefix: ipaddress.IPv4Network | None = None  # the routable pool
    block: ipaddress.IPv4Network | None = None  # the overlay block mapped onto it
    management: tuple[ipaddress.IPv4Network, ...] = ()  # pushed to devices in the hello
    services: tuple[Service, ...] = ()

    @property
    def translates(self) -> bool:
        """Whether the node keeps an nftables table for the LAN."""
        return self.prefix is not None or bool(self.services)

    def lan_address(self, overlay: ipaddress.IPv4Address) -> ipaddress.IPv4Address | None:
        """The routable address of a device's overlay address; None without a prefix."""
        if self.prefix is None or self.block is None or overlay not in self.block:
            return None
        host = int(overlay) & int(self.block.hostmask)
        return ipaddress.IPv4Address(int(self.prefix.network_address) | host)


def map_pool(prefix: ipaddress.IPv4Network, pool: AddressPool) -> ipaddress.IPv4Network:
    """The overlay block of ``prefix``'s size that holds the whole pool; ConfigError if none."""
    if prefix.prefixlen < OVERLAY.prefixlen:
        raise ConfigError(
            f"{prefix} is larger than the overlay 169.254.0.0/16: use a /16 or a longer prefix"
        )
    block = ipaddress.IPv4Network((int(pool.first), prefix.prefixlen), strict=False)
    if pool.last not in block:
        raise ConfigError(
            f"{prefix} maps {prefix.num_addresses} addresses, but overlay.pool "
            f"{pool.first}-{pool.last} does not fit one overlay block of that size: "
            f"use a shorter prefix, or a pool inside {block}"
        )
    return block


def check_service(service: Service, lan: Lan) -> None:
    """Refuse a service that points back at the overlay or at the routable pool."""
    if service.host in OVERLAY:
        raise ConfigError(
            f"{service.describe()} points at the overlay itself: give a host on the LAN"
        )
    if lan.prefix is not None and service.host in lan.prefix:
        raise ConfigError(
            f"{service.describe()} points into lan.prefix {lan.prefix}, at a device: "
            "give a host on the LAN"
        )


def ruleset(lan: Lan, tun: str, server: ipaddress.IPv4Address) -> str:
    """The node's nftables table (``nft -f``), replacing any earlier one atomically.

    Prerouting: the routable pool to the devices' overlay addresses (not the part
    that maps the service range, so the LAN never reaches the node's own overlay
    services this way), and each service from the TUN to its LAN host. Postrouting:
    a service flow leaves with the device's LAN address, or the node's without a pool.
    ``tun`` is the TUN's name, or a pattern for every worker's (``ovl0w*``).
    """
    lines = [
        f"table ip {TABLE} {{}}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
    ]
    if lan.prefix is not None and lan.block is not None:
        service_part = lan.lan_address(SERVICE_RANGE.network_address)
        exclude = f" ip daddr != {service_part}/24" if service_part is not None else ""
        lines.append(
            f'    iifname != "{tun}" ip daddr {lan.prefix}{exclude} dnat ip prefix to {lan.block}'
        )
    for service in lan.services:
        lines.append(
            f'    iifname "{tun}" ip daddr {server} {service.protocol} dport {service.port} '
            f"counter dnat to {service.host}:{service.host_port}"
        )
    lines += [
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    if lan.services:
        if lan.prefix is not None and lan.block is not None:
            lines.append(
                f'    iifname "{tun}" ct status dnat ip saddr {lan.block} '
                f"snat ip prefix to {lan.prefix}"
            )
        else:
            lines.append(f'    iifname "{tun}" ct status dnat masquerade')
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def removal() -> str:
    """``nft -f`` input that removes the node's table, if there is one."""
    return f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"
