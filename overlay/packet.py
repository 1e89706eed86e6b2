"""IPv4 and IPv6 header parsing (RFC 791, RFC 8200), pure and allocation-light.

Two uses, two speeds. The hot path only needs :func:`packet_length` to split a
frame and fixed byte offsets to read addresses; :class:`PacketInfo` parses a
header fully for policy decisions, captures and tests.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPV4_HEADER_MIN = 20
IPV6_HEADER = 40

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

# Offsets of the IPv4 source and destination addresses, used on the hot path.
IPV4_SRC = slice(12, 16)
IPV4_DST = slice(16, 20)


class PacketError(ValueError):
    """The bytes are not a well-formed IPv4 or IPv6 header."""


def packet_length(data: bytes | memoryview, offset: int = 0) -> int:
    """Return the length of the IP packet starting at ``offset``, from its header alone.

    IPv4 carries its total length; IPv6 is 40 bytes plus its payload length
    (jumbograms, RFC 2675, are not supported). Raises :class:`PacketError` when
    the header is truncated, of another version, or states an impossible length.
    """
    available = len(data) - offset
    if available < 1:
        raise PacketError("empty packet")
    version = data[offset] >> 4
    if version == 4:
        if available < IPV4_HEADER_MIN:
            raise PacketError(f"truncated IPv4 header ({available} bytes)")
        header_length = (data[offset] & 0x0F) * 4
        total = (data[offset + 2] << 8) | data[offset + 3]
        if header_length < IPV4_HEADER_MIN or total < header_length:
            raise PacketError(
                f"IPv4 length fields are inconsistent (ihl {header_length}, total {total})"
            )
        return total
    if version == 6:
        if available < IPV6_HEADER:
            raise PacketError(f"truncated IPv6 header ({available} bytes)")
        payload = (data[offset + 4] << 8) | data[offset + 5]
        return IPV6_HEADER + payload
    raise PacketError(f"IP version {version} is neither 4 nor 6")


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What policy and captures need to know about one packet."""

    version: int
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    protocol: int
    length: int
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None

    @classmethod
    def parse(cls, data: bytes | memoryview) -> PacketInfo:
        """Parse the IP header and, for the first fragment of TCP/UDP/ICMP, the ports or type."""
        length = packet_length(data)
        if length > len(data):
            raise PacketError(f"packet says {length} bytes but {len(data)} are present")
        raw = bytes(data[: IPV6_HEADER + 8]) if data[0] >> 4 == 6 else bytes(data[: 60 + 8])
        src: ipaddress.IPv4Address | ipaddress.IPv6Address
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address
        if raw[0] >> 4 == 4:
            header_length = (raw[0] & 0x0F) * 4
            protocol = raw[9]
            src = ipaddress.IPv4Address(raw[12:16])
            dst = ipaddress.IPv4Address(raw[16:20])
            first_fragment = (int.from_bytes(raw[6:8], "big") & 0x1FFF) == 0
            transport = raw[header_length:] if first_fragment else b""
        else:
            protocol = raw[6]
            src = ipaddress.IPv6Address(raw[8:24])
            dst = ipaddress.IPv6Address(raw[24:40])
            transport = raw[IPV6_HEADER:]
        src_port = dst_port = icmp_type = None
        if protocol in (PROTO_TCP, PROTO_UDP) and len(transport) >= 4:
            src_port = int.from_bytes(transport[0:2], "big")
            dst_port = int.from_bytes(transport[2:4], "big")
        elif protocol in (PROTO_ICMP, PROTO_ICMPV6) and len(transport) >= 1:
            icmp_type = transport[0]
        return cls(raw[0] >> 4, src, dst, protocol, length, src_port, dst_port, icmp_type)
