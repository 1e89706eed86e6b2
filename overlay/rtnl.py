"""Routes through a device over rtnetlink, by hand: the agent's pushed management routes.

The agent adds a few routes per hello, so it speaks the two messages it needs
(RTM_NEWROUTE, RTM_DELROUTE) itself rather than load pyroute2, which costs a
device agent 13 MB (see :mod:`overlay.tun`). The routes carry the overlay's
routing protocol number (250), as the server's do, so that they are easy to
tell apart: ``ip route show proto 250``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
RT_TABLE_MAIN, RT_SCOPE_LINK, RTN_UNICAST = 254, 253, 1
RTA_DST, RTA_OIF = 1, 4
PROTOCOL = 250  # the overlay's own; overlay.server.routes uses it too


def route_message(
    kind: int, network: ipaddress.IPv4Network, index: int, sequence: int = 1
) -> bytes:
    """One RTM_NEWROUTE (replace) or RTM_DELROUTE of ``network`` through interface ``index``."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWROUTE:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    body = struct.pack(
        "=BBBBBBBBI",
        socket.AF_INET,
        network.prefixlen,
        0,
        0,
        RT_TABLE_MAIN,
        PROTOCOL,
        RT_SCOPE_LINK,
        RTN_UNICAST,
        0,
    )
    body += struct.pack("=HH4s", 8, RTA_DST, network.network_address.packed)
    body += struct.pack("=HHI", 8, RTA_OIF, index)
    return struct.pack("=IHHII", 16 + len(body), kind, flags, sequence, 0) + body


def acknowledged(reply: bytes) -> int:
    """The errno a netlink acknowledgement carries (0: done)."""
    _, kind = struct.unpack_from("=IH", reply)
    if kind != NLMSG_ERROR:
        return errno.EPROTO
    error: int = struct.unpack_from("=i", reply, 16)[0]
    return -error


class RouteSocket:
    """A netlink socket for runs of route changes, each acknowledged: a node's tunnels'
    /32s (:mod:`overlay.server.routes`), at thousands a second where pyroute2 managed
    about 2,300."""

    CHUNK = 256  # messages a send carries: their acknowledgements must fit the receive buffer

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sequence = 0

    def change(self, changes: list[tuple[int, ipaddress.IPv4Network, int]]) -> list[int]:
        """Apply (kind, network, interface index) changes in order; the errno of each (0:
        done)."""
        codes: list[int] = []
        for start in range(0, len(changes), self.CHUNK):
            chunk = changes[start : start + self.CHUNK]
            first = self.sequence + 1
            self.sequence += len(chunk)
            self.sock.send(
                b"".join(
                    route_message(kind, network, index, first + n)
                    for n, (kind, network, index) in enumerate(chunk)
                )
            )
            found: dict[int, int] = {}
            while len(found) < len(chunk):
                reply = self.sock.recv(1 << 16)
                offset = 0
                while offset + 16 <= len(reply):
                    length, _, _, sequence = struct.unpack_from("=IHHI", reply, offset)
                    found[sequence] = acknowledged(reply[offset : offset + length])
                    offset += (length + 3) & ~3
            codes += [found.get(first + n, errno.EPROTO) for n in range(len(chunk))]
        return codes

    def close(self) -> None:
        self.sock.close()


def change_route(kind: int, network: ipaddress.IPv4Network, device: str) -> None:
    """Add (replace) or delete one route through ``device`` in this network namespace;
    OSError naming the route on failure."""
    index = socket.if_nametoindex(device)
    routes = RouteSocket()
    try:
        (code,) = routes.change([(kind, network, index)])
    finally:
        routes.close()
    if code and not (kind == RTM_DELROUTE and code == errno.ESRCH):
        raise OSError(code, f"route {network} dev {device}: {os.strerror(code)}")
