"""[lan] and [[service]]: the routable pool, the management routes, the kernel's table."""

import ipaddress
import struct

import pytest

from appliance.tunnel import management_routes
from overlay import rtnl
from overlay.exceptions import ConfigError
from overlay.server.bgp import bird_config
from overlay.server.config import load_server_config
from overlay.server.lan import ruleset
from overlay.server.policy import REPLIES_ONLY, Policy
from tests.packets import ipv4
from tests.unit.test_bgp import BGP
from tests.unit.test_config import edit, server_toml  # noqa: F401  (a fixture)

IP = ipaddress.IPv4Address
LAN = """
[lan]
prefix = "198.18.128.0/17"
management = ["198.18.2.0/24"]

[[service]]
name = "syslog"
protocol = "udp"
port = 514
to = "198.18.2.20"

[[service]]
protocol = "tcp"
port = 80
to = "198.18.2.30:8080"
"""


def lan_config(server_toml, text=LAN, pool="169.254.1.0-169.254.127.254"):  # noqa: F811
    edit(server_toml, 'pool = "169.254.1.0-169.254.255.254"', f'pool = "{pool}"')
    server_toml.write_text(server_toml.read_text() + text)
    return load_server_config(server_toml)


def test_the_pool_maps_one_to_one_with_host_bits_kept(server_toml):  # noqa: F811
    lan = lan_config(server_toml).lan
    assert str(lan.block) == "169.254.0.0/17"
    assert lan.lan_address(IP("169.254.1.7")) == IP("198.18.129.7")
    assert lan.lan_address(IP("169.254.127.254")) == IP("198.18.255.254")
    assert lan.lan_address(IP("169.254.200.1")) is None  # outside the mapped block
    assert [s.describe() for s in lan.services] == [
        "udp/514 -> 198.18.2.20:514",
        "tcp/80 -> 198.18.2.30:8080",
    ]


def test_the_kernel_table_maps_the_pool_but_not_the_service_range(server_toml):  # noqa: F811
    config = lan_config(server_toml)
    text = ruleset(config.lan, "ovl0", config.address)
    assert text.startswith("table ip overlay_lan {}\ndelete table ip overlay_lan\n")  # atomic
    assert (
        'iifname != "ovl0" ip daddr 198.18.128.0/17 ip daddr != 198.18.128.0/24 '
        "dnat ip prefix to 169.254.0.0/17" in text
    )
    assert (
        'iifname "ovl0" ip daddr 169.254.0.1 udp dport 514 counter dnat to 198.18.2.20:514' in text
    )
    assert "tcp dport 80 counter dnat to 198.18.2.30:8080" in text
    assert "snat ip prefix to 198.18.128.0/17" in text  # the collector sees the device's address


def test_services_without_a_pool_leave_with_the_nodes_address(server_toml):  # noqa: F811
    config = lan_config(server_toml, LAN.replace('prefix = "198.18.128.0/17"\n', ""))
    assert config.lan.prefix is None and config.lan.lan_address(IP("169.254.1.7")) is None
    text = ruleset(config.lan, "ovl0", config.address)
    assert "dnat ip prefix" not in text and 'iifname "ovl0" ct status dnat masquerade' in text


def test_bird_announces_only_the_routable_addresses_with_a_pool(server_toml):  # noqa: F811
    config = lan_config(
        server_toml, LAN + BGP.replace('router_id = "198.18.0.1"', 'router_id = "198.18.1.1"')
    )
    assert config.bgp is not None
    text = bird_config(config.bgp, "node-a", config.lan.prefix)
    assert "import where krt_source = 250 && net ~ [ 198.18.128.0/17{32,32} ];" in text


@pytest.mark.parametrize(
    ("old", "new", "message", "pool"),
    [
        ("198.18.128.0/17", "169.254.0.0/17", "lan.prefix: .* overlaps the overlay", None),
        ("198.18.128.0/17", "10.0.0.0/15", "larger than the overlay", None),
        ("198.18.128.0/17", "198.18.128.0/18", "does not fit one overlay block", None),
        ("198.18.128.0/17", "198.18.128.0/24", "use a shorter prefix, or a pool inside", None),
        ("198.18.128.0/17", "198.18.1.0/300", "not an IPv4 network", None),
        ('["198.18.2.0/24"]', '["0.0.0.0/0"]', "lan.management: 0.0.0.0/0 is too wide", None),
        ('["198.18.2.0/24"]', '["198.18.129.0/24"]', "overlaps the overlay or lan.prefix", None),
        ('to = "198.18.2.20"', 'to = "169.254.0.1"', "points at the overlay itself", None),
        ('to = "198.18.2.20"', 'to = "198.18.129.1"', "points into lan.prefix", None),
        ('to = "198.18.2.20"', 'to = "syslog.lan"', "is not ADDRESS or ADDRESS:PORT", None),
        (
            'protocol = "tcp"\nport = 80',
            'protocol = "udp"\nport = 514',
            r"service\[1\].port: udp/514",
            None,
        ),
        ("198.18.128.0/17", "198.19.0.0/16", "", "169.254.1.0-169.254.255.254"),
    ],
)
def test_lan_errors_name_the_key_and_what_to_do(server_toml, old, new, message, pool):  # noqa: F811
    text = LAN.replace(old, new)
    if not message:  # a /16 holds the whole default pool
        assert lan_config(server_toml, text, pool).lan.lan_address(IP("169.254.200.1"))
        return
    with pytest.raises(ConfigError, match=message):
        lan_config(server_toml, text)


def test_a_prefix_that_holds_the_underlay_address_is_refused(server_toml):  # noqa: F811
    edit(server_toml, 'host = "0.0.0.0"', 'host = "198.18.200.1"')
    with pytest.raises(ConfigError, match=r"lan\.prefix: .* holds listen\.host 198\.18\.200\.1"):
        lan_config(server_toml)


def test_a_device_may_send_to_the_management_lan_only_as_replies():
    policy = Policy(management=[ipaddress.IPv4Network("198.18.2.0/24")])
    source = IP("169.254.1.7").packed
    assert policy.from_device(ipv4("169.254.1.7", "169.254.0.1"), source) is None
    assert policy.from_device(ipv4("169.254.1.7", "198.18.2.10"), source) is REPLIES_ONLY
    assert policy.from_device(ipv4("169.254.1.7", "198.18.3.10"), source) is not None
    assert Policy().from_device(ipv4("169.254.1.7", "198.18.2.10"), source) is not None


def test_the_agent_refuses_routes_that_would_swallow_its_server_or_the_overlay():
    overlay = ipaddress.IPv4Interface("169.254.1.7/16")
    keep, refused = management_routes(
        ("198.18.2.0/24", "198.18.0.0/16", "169.254.0.0/24"), overlay, "198.18.0.1"
    )
    assert keep == {ipaddress.IPv4Network("198.18.2.0/24")}
    assert [why for _, why in refused] == [
        "it holds the server's address 198.18.0.1",
        "it overlaps the overlay",
    ]


def test_a_route_message_is_what_rtnetlink_expects():
    message = rtnl.route_message(rtnl.RTM_NEWROUTE, ipaddress.IPv4Network("198.18.2.0/24"), 7)
    length, kind, flags = struct.unpack_from("=IHH", message)
    assert (length, kind) == (len(message), rtnl.RTM_NEWROUTE)
    assert flags & rtnl.NLM_F_REPLACE and flags & rtnl.NLM_F_ACK
    family, dst_len, _, _, table, protocol, scope, kind = struct.unpack_from("=8B", message, 16)
    assert (family, dst_len, table, protocol, scope) == (2, 24, 254, 250, 253)
    assert message[-16:] == struct.pack("=HH4sHHI", 8, 1, bytes([198, 18, 2, 0]), 8, 4, 7)
    ack = struct.pack("=IHHIIi", 36, rtnl.NLMSG_ERROR, 0, 1, 0, -17)
    assert rtnl.acknowledged(ack) == 17
