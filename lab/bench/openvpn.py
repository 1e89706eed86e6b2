"""OpenVPN 2.6 in TCP mode between the bench's namespaces: what the overlay is measured
against."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lab import deploy, netns
from lab.bench.measure import DEV, SERVER_IP, SRV, measure
from overlay import certs

OPENVPN_NET = "198.19.250"  # the OpenVPN tunnel's own subnet, inside the bench namespaces

OPENVPN_SERVER = """dev ovpn0
dev-type tun
proto tcp-server
local {server}
port 1194
topology subnet
server {net}.0 255.255.255.0
ca {pki}/trust.pem
cert {pki}/server.pem
key {pki}/server.key
dh none
data-ciphers AES-256-GCM
tcp-nodelay
txqueuelen 1000
disable-dco
keepalive 10 60
verb 1
"""

OPENVPN_CLIENT = """client
dev ovpn0
dev-type tun
proto tcp-client
remote {server} 1194
nobind
ca {pki}/trust.pem
cert {pki}/client.pem
key {pki}/client.key
data-ciphers AES-256-GCM
txqueuelen 1000
disable-dco
verb 1
"""


def openvpn_path(work: Path, seconds: float, pings: int) -> dict[str, Any]:
    vpn = work / "openvpn"
    # The OpenVPN peers' certificates, made as the overlay's are; each side trusts both CAs
    certs.init(vpn, [SERVER_IP])
    certs.issue_clients(vpn, ["client"])
    (vpn / "trust.pem").write_bytes(
        (vpn / certs.CA_FILE).read_bytes() + (vpn / certs.CLIENT_CA_FILE).read_bytes()
    )
    (vpn / "server.conf").write_text(
        OPENVPN_SERVER.format(server=SERVER_IP, net=OPENVPN_NET, pki=vpn)
    )
    (vpn / "client.conf").write_text(OPENVPN_CLIENT.format(server=SERVER_IP, pki=vpn))
    vpn_server = netns.spawn(
        SRV, ["openvpn", "--config", str(vpn / "server.conf")], vpn / "server.log"
    )
    time.sleep(1)
    vpn_client = netns.spawn(
        DEV, ["openvpn", "--config", str(vpn / "client.conf")], vpn / "client.log"
    )
    try:
        deploy.wait_for(
            "OpenVPN up",
            lambda: "Initialization Sequence Completed" in (vpn / "client.log").read_text(),
            timeout=30,
            log=vpn / "client.log",
        )
        return measure("openvpn-tcp", vpn_server.pid, f"{OPENVPN_NET}.1", seconds, pings)
    finally:
        netns.stop(vpn_client)
        netns.stop(vpn_server)
