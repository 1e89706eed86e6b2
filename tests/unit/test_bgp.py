"""[bgp] in server.toml, and the BIRD configuration made from it."""

import ipaddress

import pytest

from overlay.exceptions import ConfigError
from overlay.server.bgp import bird_config
from overlay.server.config import load_server_config
from tests.unit.test_config import edit, server_toml  # noqa: F401  (a fixture)

BGP = """
[bgp]
local_as = 65010
router_id = "198.18.0.1"
[[bgp.neighbor]]
address = "198.18.0.254"
as = 65000
[[bgp.neighbor]]
address = "198.18.0.253"
as = 65000
"""


def test_bird_announces_our_kernel_routes_to_every_neighbor(server_toml):  # noqa: F811
    server_toml.write_text(server_toml.read_text() + BGP)
    config = load_server_config(server_toml)
    assert config.bgp is not None
    assert config.bgp.router_id == ipaddress.IPv4Address("198.18.0.1")
    text = bird_config(config.bgp, "node-a")
    assert "router id 198.18.0.1;" in text
    assert "import where krt_source = 250; export none;" in text  # ours, and nothing back
    assert text.count("local as 65010;") == 2
    assert "neighbor 198.18.0.254 as 65000;" in text and "neighbor 198.18.0.253 as 65000;" in text
    assert text.count('export where proto = "overlay_tunnels";') == 2
    assert text.count("bfd on;") == 2 and "protocol bfd" in text
    assert "hold time 9;" in text and "keepalive time 3;" in text


def test_without_bfd_the_sessions_say_so(server_toml):  # noqa: F811
    server_toml.write_text(server_toml.read_text() + BGP.replace("[bgp]", "[bgp]\nbfd = false"))
    config = load_server_config(server_toml)
    assert config.bgp is not None
    text = bird_config(config.bgp, "node-a")
    assert "protocol bfd" not in text and "bfd off;" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace('router_id = "198.18.0.1"\n', ""), "bgp.router_id: is needed"),
        (lambda t: t.split("[[bgp.neighbor]]")[0], "bgp.neighbor: give at least one"),
        (lambda t: t.replace("as = 65000", "as = 0", 1), r"bgp.neighbor\[0\].as: must be"),
        (lambda t: t.replace("198.18.0.254", "router", 1), r"bgp.neighbor\[0\].address"),
    ],
)
def test_bgp_errors_name_the_key(server_toml, change, message):  # noqa: F811
    server_toml.write_text(server_toml.read_text() + change(BGP))
    with pytest.raises(ConfigError, match=message):
        load_server_config(server_toml)


def test_bgp_needs_the_routes(server_toml):  # noqa: F811
    server_toml.write_text(server_toml.read_text() + BGP)
    edit(server_toml, "routes = true ", "routes = false ")
    with pytest.raises(ConfigError, match=r"overlay\.routes: must be true with"):
        load_server_config(server_toml)
