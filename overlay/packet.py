"""IPv4 and IPv6 header parsing (RFC 791, RFC 8200), pure and allocation-light.

The hot path only needs :func:`packet_length` to split a frame and fixed byte
offsets to read addresses; the firewall reads the transport header in place.
"""

from __future__ import annotations

IPV4_HEADER_MIN = 20
IPV6_HEADER = 40

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

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
