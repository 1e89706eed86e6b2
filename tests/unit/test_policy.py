import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from overlay.counters import Drop
from overlay.server.policy import Policy
from tests.packets import ipv4, ipv6

DEVICE = ipaddress.IPv4Address("169.254.1.1").packed
policy = Policy()


def test_device_to_service_range_passes():
    assert policy.from_device(ipv4("169.254.1.1", "169.254.0.1"), DEVICE) is None
    assert policy.from_device(memoryview(ipv4("169.254.1.1", "169.254.0.200")), DEVICE) is None


def test_spoofed_source_is_dropped():
    assert policy.from_device(ipv4("169.254.1.9", "169.254.0.1"), DEVICE) is Drop.SPOOFED


def test_device_to_device_is_dropped():
    assert policy.from_device(ipv4("169.254.1.1", "169.254.1.2"), DEVICE) is Drop.POLICY
    assert policy.from_device(ipv4("169.254.1.1", "198.18.0.1"), DEVICE) is Drop.POLICY


def test_ipv6_is_not_carried():
    assert policy.from_device(ipv6("fe80::1", "ff02::2"), DEVICE) is Drop.UNSUPPORTED


@given(st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_only_own_source_to_service_range_passes(src, dst):
    verdict = policy.from_device(ipv4(str(src), str(dst)), DEVICE)
    allowed = src.packed == DEVICE and dst in ipaddress.IPv4Network("169.254.0.0/24")
    assert (verdict is None) == allowed
