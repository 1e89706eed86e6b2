import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.packet import PacketError, packet_length
from tests.packets import ipv4, ipv6


def test_ipv4_length_comes_from_total_length():
    packet = ipv4("169.254.1.1", "169.254.0.1", payload=b"x" * 100)
    assert packet_length(packet) == len(packet) == 20 + 8 + 100


def test_ipv6_length_is_header_plus_payload():
    packet = ipv6("fe80::1", "fe80::2", payload=b"y" * 50)
    assert packet_length(packet) == 90


def test_length_at_offset():
    first = ipv4("169.254.1.1", "169.254.0.1", payload=b"a")
    second = ipv4("169.254.1.1", "169.254.0.1", payload=b"bb")
    assert packet_length(first + second, len(first)) == len(second)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x45" + b"\x00" * 10, "truncated IPv4"),
        (b"\x60" + b"\x00" * 20, "truncated IPv6"),
        (b"\x55" + b"\x00" * 30, "version 5"),
        (b"\x00" * 40, "version 0"),
        (b"\x44" + b"\x00" * 19, "inconsistent"),  # ihl 4 words is below the minimum
        (b"\x45\x00\x00\x10" + b"\x00" * 16, "inconsistent"),  # total 16 < header 20
    ],
)
def test_bad_headers_are_refused(data, message):
    with pytest.raises(PacketError, match=message):
        packet_length(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_packet_error(data):
    try:
        length = packet_length(data)
    except PacketError:
        return
    assert length >= 20
