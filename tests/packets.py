"""Build IPv4/IPv6 packets for tests (headers only as complete as the code under test needs)."""

from __future__ import annotations

import ipaddress
import struct


def ipv4(
    src: str, dst: str, proto: int = 17, payload: bytes = b"", sport: int = 1000, dport: int = 161
) -> bytes:
    """An IPv4 packet; for UDP/TCP a transport header with the ports is put before ``payload``."""
    if proto == 17:
        body = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    elif proto == 6:
        body = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x02, 65535, 0, 0) + payload
    elif proto == 1:
        body = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + payload
    else:
        body = payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + body


def ipv6(src: str, dst: str, next_header: int = 17, payload: bytes = b"\x00" * 8) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        next_header,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + payload
