from pathlib import Path

import pytest

from appliance.dhcp import DhcpValues, LeaseWatcher, parse_dhclient, parse_lease, parse_networkd
from appliance.exceptions import InputError
from appliance.tunnel import dhcp_url

DHCLIENT = """\
lease {
  interface "eth0";
  fixed-address 198.19.1.11;
  option subnet-mask 255.255.255.0;
  option unknown-253 "old.example.net";
  renew 2 2026/11/22 02:00:00;
}
lease {
  interface "eth0";
  fixed-address 198.19.1.11;
  option unknown-253 "overlay.example.net";
  option unknown-252 73:33:63:72:65:74:2d:70:61:73:73;
  option domain-name-servers 198.19.1.1;
}
"""

NETWORKD = """\
# This is private data. Do not parse.
ADDRESS=198.19.1.11
NETMASK=255.255.255.0
OPTION_253=6f7665726c61792e6578616d706c652e6e6574
OPTION_252=73336372657400
"""


def test_dhclient_takes_the_last_lease_and_reads_text_and_hex():
    assert parse_dhclient(DHCLIENT) == {253: b"overlay.example.net", 252: b"s3cret-pass"}
    assert parse_lease(DHCLIENT) == DhcpValues("overlay.example.net", "s3cret-pass")


def test_networkd_private_options_in_hex():
    assert parse_networkd(NETWORKD) == {253: b"overlay.example.net", 252: b"s3cret\x00"}
    assert parse_lease(NETWORKD) == DhcpValues("overlay.example.net", "s3cret")


def test_a_lease_without_the_options():
    assert parse_lease("lease {\n  fixed-address 198.19.1.11;\n}\n") == DhcpValues(None, None)
    assert parse_lease("ADDRESS=198.19.1.11\n") == DhcpValues(None, None)


def test_bad_hex_is_an_input_error():
    with pytest.raises(InputError, match="OPTION_253"):
        parse_networkd("OPTION_253=zz\n")


def test_watcher_reports_changes_only(tmp_path: Path):
    lease = tmp_path / "leases"
    watcher = LeaseWatcher(lease)
    assert not watcher.read()  # no file: no values, nothing changed
    lease.write_text(NETWORKD)
    assert watcher.read()
    assert watcher.values.server == "overlay.example.net"
    lease.write_text(NETWORKD + "\n# rewritten with the same values\n")
    assert not watcher.read()
    lease.write_text(NETWORKD.replace("73336372657400", "6e6577"))
    assert watcher.read()
    assert watcher.values.password == "new"


@pytest.mark.parametrize(
    ("server", "url"),
    [
        ("overlay.example.net", "wss://overlay.example.net/tun"),
        ("198.18.0.9:8443", "wss://198.18.0.9:8443/tun"),
        ("wss://other.example.net/x", "wss://other.example.net/x"),
    ],
)
def test_dhcp_server_takes_the_configured_path(server, url):
    assert dhcp_url(server, "wss://manual.example.net/tun") == url


def test_an_empty_file_is_one_being_rewritten(tmp_path: Path):
    lease = tmp_path / "leases"
    lease.write_text(NETWORKD)
    watcher = LeaseWatcher(lease)
    assert watcher.read()
    lease.write_text("")
    assert not watcher.read()
    assert watcher.values.server == "overlay.example.net"
    lease.unlink()
    assert watcher.read()  # no lease at all: the configured values apply again
    assert watcher.values == DhcpValues(None, None)
