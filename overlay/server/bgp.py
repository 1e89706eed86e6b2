"""BIRD 2's configuration for a node, made from server.toml's ``[bgp]`` (pure: no I/O).

The overlay server speaks no BGP. It owns its kernel routes (``routes.py``,
protocol 250), and BIRD learns exactly those (``krt_source = 250``) and
announces them to the management network's routers. A lost node's sessions
drop within a second with BFD (or ``hold_time`` without it), and the routers
withdraw its routes. ``overlay bird-config`` prints the file; docs/reach.md
says where it goes and how the routers peer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from overlay.rtnl import PROTOCOL


@dataclass(frozen=True)
class Neighbor:
    address: ipaddress.IPv4Address
    asn: int


@dataclass(frozen=True)
class BgpConfig:
    local_as: int
    router_id: ipaddress.IPv4Address
    neighbors: tuple[Neighbor, ...]
    bfd: bool  # BFD on every session: a lost node's routes go within a second
    hold_time: int  # seconds; keepalives every third of it
    bird_socket: Path  # BIRD's control socket: the node checks that BIRD runs


def bird_config(bgp: BgpConfig, node: str, lan: ipaddress.IPv4Network | None = None) -> str:
    """The whole bird.conf of node ``node``; with ``lan`` (``[lan] prefix``) only the
    tunnels' routable addresses are announced, not their overlay ones."""
    learn = f"krt_source = {PROTOCOL}"
    if lan is not None:
        learn += f" && net ~ [ {lan}{{32,32}} ]"
    lines = [
        f"# BIRD 2 configuration of overlay node {node}, made by overlay bird-config.",
        "# It announces the /32 routes of this node's tunnels (kernel protocol",
        f"# {PROTOCOL}, installed by overlay serve) and nothing else.",
        f"router id {bgp.router_id};",
        "",
        "protocol device { scan time 10; }",
        "",
        "protocol kernel overlay_tunnels {",
        f"    ipv4 {{ import where {learn}; export none; }};",
        "    learn;          # routes that overlay serve put in the kernel",
        "    scan time 1;    # and, besides netlink's notices, a rescan every second",
        "}",
    ]
    if bgp.bfd:
        lines += [
            "",
            "protocol bfd {",
            '    interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };',
            "}",
        ]
    for number, neighbor in enumerate(bgp.neighbors, 1):
        lines += [
            "",
            f"protocol bgp lan{number} {{",
            f"    local as {bgp.local_as};",
            f"    neighbor {neighbor.address} as {neighbor.asn};",
            f"    hold time {bgp.hold_time};",
            f"    keepalive time {max(1, bgp.hold_time // 3)};",
            "    connect retry time 5;  # a router back from a restart is peered within seconds",
            "    error wait time 2, 60;  # a session BFD downed while both came up: again soon",
            f"    bfd {'on' if bgp.bfd else 'off'};",
            "    ipv4 {",
            "        import none;  # the node routes to devices only; it learns nothing",
            '        export where proto = "overlay_tunnels";',
            "    };",
            "}",
        ]
    return "\n".join(lines) + "\n"
