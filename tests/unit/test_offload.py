"""Segmentation offload: the Internet checksum, finishing checksums, cutting TCP segments."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import offload
from overlay.offload import GSO_TCPV4, NEEDS_CSUM, PLAIN, OffloadError
from tests.packets import ipv4

SRC, DST = "169.254.0.1", "169.254.1.1"


def reference_checksum(data: bytes) -> int:
    """RFC 1071 the slow way: 16-bit words, end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def header(flags=0, gso_type=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, 0, gso_size, csum_start, csum_offset)


def tcp_checksum_ok(packet: bytes) -> bool:
    """Does the receiver's check of the TCP checksum (pseudo-header included) pass?"""
    ihl = (packet[0] & 15) * 4
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(packet) - ihl)
    return reference_checksum(pseudo + packet[ihl:]) == 0


def with_partial_checksum(packet: bytes) -> bytes:
    """The packet as a kernel hands it over with NEEDS_CSUM: the TCP checksum field
    holds the pseudo-header's sum, not complemented."""
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(packet) - 20)
    partial = ~reference_checksum(pseudo) & 0xFFFF
    return packet[:36] + partial.to_bytes(2, "big") + packet[38:]


@given(st.binary(max_size=300))
def test_checksum_matches_rfc_1071(data):
    assert offload.checksum(data) == reference_checksum(data)


def test_a_plain_header_leaves_the_packet_alone():
    packet = ipv4(SRC, DST, proto=6, payload=b"x" * 100)
    assert offload.is_plain(PLAIN + packet)
    assert [bytes(p) for p in offload.plain(PLAIN + packet)] == [packet]


def test_an_unfinished_checksum_is_finished():
    packet = with_partial_checksum(ipv4(SRC, DST, proto=6, payload=b"hello" * 51))
    assert not tcp_checksum_ok(packet)
    record = header(NEEDS_CSUM, csum_start=20, csum_offset=16) + packet
    assert not offload.is_plain(record)
    (done,) = offload.plain(record)
    assert tcp_checksum_ok(done)
    assert done[:36] == packet[:36] and done[38:] == packet[38:]


def test_a_large_segment_is_cut_as_the_kernel_would():
    payload = bytes(range(256)) * 20  # 5,120 bytes: 3 segments of 1,448 and one of 776
    packet = ipv4(SRC, DST, proto=6, payload=payload, tcp_flags=0x80 | 0x18 | 0x01, ident=7)
    packet = packet[:24] + (1000).to_bytes(4, "big") + packet[28:]  # sequence number 1000
    record = header(NEEDS_CSUM, GSO_TCPV4, 1448, 20, 16) + with_partial_checksum(packet)
    segments = offload.plain(record)
    assert [len(s) - 40 for s in segments] == [1448, 1448, 1448, 776]
    assert b"".join(bytes(s[40:]) for s in segments) == payload
    for index, segment in enumerate(segments):
        assert struct.unpack("!H", segment[2:4])[0] == len(segment)
        assert struct.unpack("!H", segment[4:6])[0] == 7 + index
        assert struct.unpack("!I", segment[24:28])[0] == 1000 + 1448 * index
        assert reference_checksum(segment[:20]) == 0
        assert tcp_checksum_ok(segment)
    flags = [s[33] for s in segments]
    assert flags == [0x80 | 0x10, 0x10, 0x10, 0x18 | 0x01]  # CWR first; PSH and FIN last


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (header(0, 3, 1400) + ipv4(SRC, DST, proto=17, payload=b"u" * 3000), "not TCPv4"),
        (header(0, GSO_TCPV4, 1400) + ipv4(SRC, DST, proto=17, payload=b"u" * 3000), "not TCP"),
        (header(0, GSO_TCPV4, 0) + ipv4(SRC, DST, proto=6, payload=b"t" * 3000), "size 0"),
        (header(NEEDS_CSUM, 0, 0, 20, 400) + ipv4(SRC, DST, proto=6), "beyond"),
    ],
)
def test_headers_this_end_cannot_honour_are_refused(record, message):
    with pytest.raises(OffloadError, match=message):
        offload.plain(record)


def test_headers_an_honest_kernel_writes_are_acceptable() -> None:
    segment = ipv4(SRC, DST, 6, b"x" * 3000)
    udp = ipv4(SRC, DST, 17, b"x" * 100)
    assert offload.acceptable(PLAIN + udp)
    assert offload.acceptable(header(NEEDS_CSUM, 0, 0, 20, 16) + ipv4(SRC, DST, 6, b"x"))
    assert offload.acceptable(header(NEEDS_CSUM, 0, 0, 20, 6) + udp)
    assert offload.acceptable(header(NEEDS_CSUM, GSO_TCPV4, 1360, 20, 16) + segment)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (header(NEEDS_CSUM, GSO_TCPV4, 1360, 20, 6) + ipv4(SRC, DST, 17, b"x" * 3000), "UDP"),
        (header(NEEDS_CSUM, GSO_TCPV4, 1, 20, 16) + ipv4(SRC, DST, 6, b"x" * 3000), "size 1"),
        (header(NEEDS_CSUM, GSO_TCPV4, 0, 20, 16) + ipv4(SRC, DST, 6, b"x" * 3000), "size 0"),
        (header(NEEDS_CSUM, 0, 0, 20, 2) + ipv4(SRC, DST, 6, b"x"), "offset at a port"),
        (header(NEEDS_CSUM, 0, 0, 0, 16) + ipv4(SRC, DST, 6, b"x"), "start not the header"),
        (header(0x04, 0, 0, 0, 0) + ipv4(SRC, DST, 6, b"x"), "unknown flag"),
        (header(0, GSO_TCPV4, 1360, 20, 16) + ipv4(SRC, DST, 6, b"x" * 3000), "no checksum"),
        (header(0, 0x03, 1360, 0, 0) + ipv4(SRC, DST, 17, b"x"), "UDP fragmentation"),
        (
            header(NEEDS_CSUM, GSO_TCPV4, 1360, 20, 16)
            + ipv4(SRC, DST, 6, b"x" * 3000, fragment=0x2000),
            "a fragment",
        ),
        (header(0, 0, 0, 0, 0) + b"\x45" + bytes(10), "truncated"),
    ],
)
def test_headers_no_kernel_would_write_are_refused(record: bytes, why: str) -> None:
    assert not offload.acceptable(record), why
