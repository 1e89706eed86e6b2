"""Build IPv4/IPv6 packets for tests (headers only as complete as the code under test needs)."""

from __future__ import annotations

import ipaddress
import struct


def ipv4(
    src: str,
    dst: str,
    proto: int = 17,
    payload: bytes = b"",
    sport: int = 1000,
    dport: int = 161,
    tcp_flags: int = 0x02,
    icmp_type: int = 8,
    icmp_id: int = 1,
    ident: int = 0,
    fragment: int = 0,
    seq: int = 0,
) -> bytes:
    """An IPv4 packet; for UDP/TCP/ICMP a transport header is put before ``payload``.

    ``fragment`` is the 16-bit flags and offset field (0x2000: more fragments).
    """
    if proto == 17:
        body = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    elif proto == 6:
        body = (
            struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, tcp_flags, 65535, 0, 0)
            + payload
        )
    elif proto == 1:
        body = struct.pack("!BBHHH", icmp_type, 0, 0, icmp_id, 1) + payload
    else:
        body = payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        ident,
        fragment,
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
