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


def change_route(kind: int, network: ipaddress.IPv4Network, device: str) -> None:
    """Add (replace) or delete one route through ``device`` in this network namespace;
    OSError naming the route on failure."""
    index = socket.if_nametoindex(device)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.sendto(route_message(kind, network, index), (0, 0))
        code = acknowledged(sock.recv(65536))
    if code and not (kind == RTM_DELROUTE and code == errno.ESRCH):
        raise OSError(code, f"route {network} dev {device}: {os.strerror(code)}")
