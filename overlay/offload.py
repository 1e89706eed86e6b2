"""Segmentation offload: the virtio-net header that a TUN with IFF_VNET_HDR puts before
each packet, and the software fallback for peers that cannot take large segments.

Why. Without offload the kernel cuts every TCP send into MTU-sized packets before
the TUN, and the tunnel then pays one read, one firewall check and one write per
1,400 bytes at each end. With TUN_F_TSO4 the TUN hands over TCP segments of up to
64 KiB with a header that says how to cut them (``gso_size``), and a TUN that is
written such a segment lets the receiving kernel take it whole, as a NIC's GRO
would. wireguard-go does the same. On the wire each packet then travels behind
its 10-byte header (docs/protocol.md, "offload"); a peer that did not ask for
offload gets plain packets, cut and checksummed here.

The header (include/uapi/linux/virtio_net.h), little-endian as Linux uses it on
little-endian hosts: flags, gso_type (u8 each), hdr_len, gso_size, csum_start,
csum_offset (u16 each). No I/O here.
"""

from __future__ import annotations

import struct

HEADER_SIZE = 10
MAX_RECORD = HEADER_SIZE + 65535  # a header and the largest IPv4 packet or segment
PLAIN = bytes(HEADER_SIZE)  # no segmentation, checksum complete

NEEDS_CSUM = 0x01  # flags: the checksum at csum_start + csum_offset is only the pseudo-header's
GSO_NONE = 0x00
GSO_TCPV4 = 0x01

_HEADER = struct.Struct("<BBHHHH")
_TCP = 6
_FIN_PSH = 0x09
_CWR = 0x80


# What an honest kernel writes, and so all that a peer's header may ask of ours:
# the checksum field's offset in the TCP and UDP headers, and the smallest segment size
# (the smallest overlay MTU, 576, less the IPv4 and TCP headers). A smaller gso_size
# would make the server's kernel cut one 64 KiB segment into thousands of packets.
_CHECKSUM_FIELD = {_TCP: 16, 17: 6}
MIN_GSO_SIZE = 536


def acceptable(record: bytes | memoryview) -> bool:
    """Whether a header from a peer asks only what a TUN's own header could: no unknown
    flag bits; a checksum to finish exactly at the TCP or UDP checksum field; TCPv4
    segmentation only of an unfragmented TCP packet, with a sane segment size."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = _HEADER.unpack_from(record)
    if flags & ~NEEDS_CSUM or len(record) < HEADER_SIZE + 20:
        return False
    header = (record[HEADER_SIZE] & 0x0F) * 4
    protocol = record[HEADER_SIZE + 9]
    if flags & NEEDS_CSUM:
        if csum_start != header or csum_offset != _CHECKSUM_FIELD.get(protocol):
            return False
    elif csum_start or csum_offset:
        return False
    if gso_type == GSO_NONE:
        return bool(gso_size == 0)
    fragment = record[HEADER_SIZE + 6] & 0x3F or record[HEADER_SIZE + 7]
    return (
        gso_type == GSO_TCPV4
        and protocol == _TCP
        and bool(flags & NEEDS_CSUM)
        and not fragment
        and bool(gso_size >= MIN_GSO_SIZE)
    )


class OffloadError(ValueError):
    """A header that asks for something this end does not do (not TCPv4, bad offsets)."""


def is_plain(record: bytes | memoryview) -> bool:
    """True when the packet behind the header is complete as it stands."""
    return record[1] == GSO_NONE and not record[0] & NEEDS_CSUM


def plain(record: bytes) -> list[memoryview] | list[bytes]:
    """The complete packets behind one header: the packet itself when the header asks
    for nothing, else what :func:`complete` makes of it."""
    if is_plain(record):
        return [memoryview(record)[HEADER_SIZE:]]
    return complete(record)


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``, plus ``initial`` (a partial sum).

    A big-endian integer of the data is congruent, modulo 0xffff, to the sum of its
    16-bit words, because 2**16 = 1 (mod 0xffff): one C-speed ``int.from_bytes``
    instead of a Python loop over the words.
    """
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = (int.from_bytes(data, "big") + initial) % 0xFFFF
    if total == 0 and (initial or any(data)):
        total = 0xFFFF
    return ~total & 0xFFFF


def complete(record: bytes | memoryview) -> list[bytes]:
    """The plain IPv4 packets a header and its packet stand for: segmented and with
    finished checksums, as the kernel would have sent them without offload."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = _HEADER.unpack_from(record)
    packet = memoryview(record)[HEADER_SIZE:]
    if gso_type == GSO_NONE:
        if not flags & NEEDS_CSUM:
            return [bytes(packet)]
        field = csum_start + csum_offset
        if field + 2 > len(packet):
            raise OffloadError(f"checksum offset {field} is beyond the {len(packet)}-byte packet")
        out = bytearray(packet)  # the field holds the pseudo-header's sum: sum over it
        out[field : field + 2] = checksum(out[csum_start:]).to_bytes(2, "big")
        return [bytes(out)]
    if gso_type != GSO_TCPV4 or not gso_size:
        raise OffloadError(f"segmentation type {gso_type:#x} with size {gso_size} is not TCPv4")
    return _segment_tcp(packet, gso_size)


def _segment_tcp(packet: memoryview, size: int) -> list[bytes]:
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 20 or packet[9] != _TCP:
        raise OffloadError("a TCPv4 segment header on a packet that is not TCP")
    thl = (packet[ihl + 12] >> 4) * 4
    headers = ihl + thl
    payload = packet[headers:]
    ip_header, tcp_header = bytearray(packet[:ihl]), bytearray(packet[ihl:headers])
    ident = int.from_bytes(ip_header[4:6], "big")
    sequence = int.from_bytes(tcp_header[4:8], "big")
    flags = tcp_header[13]
    pseudo = int.from_bytes(ip_header[12:20], "big") + _TCP  # addresses and protocol
    segments = []
    count = (len(payload) + size - 1) // size
    for index in range(count):
        chunk = payload[index * size : (index + 1) * size]
        last = index == count - 1
        ip_header[2:4] = (headers + len(chunk)).to_bytes(2, "big")
        ip_header[4:6] = ((ident + index) & 0xFFFF).to_bytes(2, "big")
        ip_header[10:12] = b"\0\0"
        ip_header[10:12] = checksum(ip_header).to_bytes(2, "big")
        tcp_header[4:8] = ((sequence + index * size) & 0xFFFFFFFF).to_bytes(4, "big")
        tcp_header[13] = flags & ~(0 if last else _FIN_PSH) & ~(_CWR if index else 0)
        tcp_header[16:18] = b"\0\0"
        segment = tcp_header + chunk
        tcp_header[16:18] = checksum(segment, pseudo + len(segment)).to_bytes(2, "big")
        segments.append(bytes(ip_header + tcp_header + chunk))
    return segments
