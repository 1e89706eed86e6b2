import ipaddress

import pytest

from overlay.addressing import AddressPool, is_assignable
from overlay.exceptions import ConfigError, PoolExhaustedError

A = ipaddress.IPv4Address


def allocate_all(pool):
    taken: set[ipaddress.IPv4Address] = set()
    last = None
    while True:
        try:
            last = pool.allocate(taken, after=last)
        except PoolExhaustedError:
            return taken
        taken.add(last)


def test_first_device_gets_169_254_1_1():
    assert AddressPool.parse("169.254.1.0-169.254.255.254").allocate(set()) == A("169.254.1.1")


def test_skips_dot_zero_dot_255_and_cloud_metadata():
    addresses = allocate_all(AddressPool.parse("169.254.168.250-169.254.170.5"))
    assert A("169.254.169.254") not in addresses
    assert A("169.254.169.123") not in addresses
    assert not any(int(a) & 0xFF in (0, 255) for a in addresses)
    assert A("169.254.169.253") in addresses and A("169.254.170.1") in addresses


def test_whole_default_pool_size():
    addresses = allocate_all(AddressPool.parse("169.254.1.0/24"))
    assert len(addresses) == 254


def test_exhaustion_raises():
    pool = AddressPool.parse("169.254.1.1-169.254.1.2")
    with pytest.raises(PoolExhaustedError, match="exhausted"):
        pool.allocate({A("169.254.1.1"), A("169.254.1.2")})


def test_search_wraps_after_the_last_address():
    pool = AddressPool.parse("169.254.1.1-169.254.1.3")
    assert pool.allocate({A("169.254.1.3")}, after=A("169.254.1.2")) == A("169.254.1.1")


def test_service_range_is_never_assignable():
    assert not is_assignable(A("169.254.0.7"))
    assert not is_assignable(A("10.0.0.1"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("169.254.0.0/24", "kept for servers"),
        ("10.0.0.0/8", "outside"),
        ("169.254.2.0-169.254.1.0", "first is after last"),
        ("pool", "neither a CIDR"),
    ],
)
def test_bad_pools(text, message):
    with pytest.raises(ConfigError, match=message):
        AddressPool.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "169.254.1.0-169.254.255.254",
        "169.254.1.0/24",
        "169.254.1.1-169.254.1.1",
        "169.254.1.255-169.254.2.0",
        "169.254.169.100-169.254.170.3",
        "169.254.169.254-169.254.169.254",
        "169.254.7.13-169.254.9.200",
    ],
)
def test_capacity_counts_what_a_walk_would(text):
    pool = AddressPool.parse(text)
    walked = sum(
        is_assignable(ipaddress.IPv4Address(n)) for n in range(int(pool.first), int(pool.last) + 1)
    )
    assert pool.capacity == walked
