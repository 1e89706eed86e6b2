"""Routes per tunnel, announced by BIRD to an FRR router over BGP (with BFD)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.deploy import BIN, wait_for
from lab.routing import Bird, Frr, frr_peer_config
from tests.integration.conftest import PASSWORD, PREFIX, SERVER_IP, SRV, Overlay
from tests.integration.test_firewall import connects, listen

pytestmark = pytest.mark.netns

ROUTER_IP = "198.18.0.254"
BGP = """
[bgp]
local_as = 65010
bird_socket = "{socket}"
[[bgp.neighbor]]
address = "{router}"
as = 65000
"""


@pytest.fixture
def frr(overlay: Overlay) -> Iterator[Frr]:
    """The management network's router (FRR) on the underlay, at 198.18.0.254."""
    made = Frr(Path(f"/tmp/ovl-test-frr-{os.getpid()}"), overlay.attach("lan", ROUTER_IP))
    try:
        yield made
    finally:
        made.remove()


def bgp_routes(frr: Frr) -> set[str]:
    """The prefixes the router learned over BGP."""
    text = frr.vtysh("show ip route bgp json")
    return set(json.loads(text or "{}"))


def test_each_tunnel_is_a_kernel_route_that_bird_announces_to_the_router(
    overlay: Overlay, frr: Frr
) -> None:
    bird = Bird(overlay.root / "bird", SRV)
    config = deploy.server_config(
        overlay.root / "server",
        overlay.pki_dir,
        PASSWORD,
        host=SERVER_IP,
        extra=BGP.format(socket=bird.socket, router=ROUTER_IP),
    )
    overlay.server_config = config
    overlay.start_server()
    made = overlay.run(SRV, str(BIN / "overlay"), "bird-config", "--config", str(config))
    assert made.returncode == 0, made.stderr
    assert "import where krt_source = 250" in made.stdout
    bird.start(made.stdout)
    try:
        frr.start(frr_peer_config(65000, ROUTER_IP, {SERVER_IP: 65010}, bfd=True))
        deploy.wait_for(
            "the BGP session",
            lambda: "Established" in frr.vtysh(f"show bgp neighbor {SERVER_IP}"),
            timeout=60,
        )
        device = overlay.add_device("dev1")
        started = time.monotonic()
        tunnel = overlay.start_device(device)
        assert tunnel is not None
        route = f"{tunnel['address']}/32"
        deploy.wait_for("the router learning the device's route", lambda: route in bgp_routes(frr))
        print(f"route at the router {time.monotonic() - started:.2f} s after the agent started")
        assert bgp_routes(frr) == {route}  # ours only: not the overlay's /16, nothing else
        status = overlay.server_status()
        assert status["server"]["routes"] == {"installed": 1, "errors": {}}

        assert device.process is not None
        device.process.send_signal(signal.SIGTERM)  # the device leaves
        deploy.wait_for("the route withdrawn", lambda: route not in bgp_routes(frr))

        overlay.start_device(device)
        deploy.wait_for("the route again", lambda: route in bgp_routes(frr))
        deploy.wait_for(  # the node looks every 5 s; it started before BIRD
            "the node seeing BIRD run",
            lambda: overlay.server_status()["server"]["bird"]["up"] is True,
        )

        bird.stop()  # the node keeps its tunnels, and says that nobody announces them
        deploy.wait_for(
            "the node noticing BIRD gone",
            lambda: overlay.server_status()["server"]["bird"]["up"] is False,
        )
        assert "BIRD does not answer" in overlay.server_log.read_text()
        assert len(overlay.server_status()["sessions"]) == 1
        bird.start(made.stdout)
        deploy.wait_for("the route announced again", lambda: route in bgp_routes(frr), timeout=30)
        assert overlay.server is not None
        overlay.server.kill()  # a node that dies: its TUN and its routes go with it
        started = time.monotonic()
        deploy.wait_for("the dead node's route withdrawn", lambda: not bgp_routes(frr))
        print(f"withdrawn {time.monotonic() - started:.2f} s after the node died")
    finally:
        bird.stop()


NMS_IP, NMS_GATEWAY = "198.18.2.10", "198.18.2.1"
LAN = """
[lan]
prefix = "198.18.128.0/17"
management = ["198.18.2.0/24"]

[[service]]
name = "central syslog"
protocol = "udp"
port = 514
to = "198.18.2.10:5514"

[firewall]
[[firewall.rule]]
direction = "to-device"
protocol = "tcp"
ports = "7002"
sources = ["198.18.2.0/24"]
[[firewall.rule]]
direction = "to-device"
protocol = "tcp"
ports = "7003"
sources = ["198.18.3.0/24"]
[[firewall.rule]]
direction = "from-device"
protocol = "udp"
ports = "514"
"""
COLLECT = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("198.18.2.10", 5514))
print("ready", flush=True)
data, peer = sock.recvfrom(2048)
print(peer[0], data.decode(), flush=True)
"""


def management_lan(overlay: Overlay) -> str:
    """An NMS behind the node, the node its gateway: ovlt-srv lan0 198.18.2.1/24."""
    nms = f"{PREFIX}nms"
    netns.create(nms)
    netns.veth(SRV, "lan0", nms, "eth0")
    netns.address(SRV, "lan0", f"{NMS_GATEWAY}/24")
    netns.address(nms, "eth0", f"{NMS_IP}/24")
    netns.route(nms, "0.0.0.0/0", NMS_GATEWAY)
    return nms


def lan_server(overlay: Overlay, extra: str, pool: str = "169.254.1.0-169.254.127.254") -> Path:
    return deploy.server_config(
        overlay.root / "server",
        overlay.pki_dir,
        PASSWORD,
        host=SERVER_IP,
        overlay=f'pool = "{pool}"',
        extra=extra,
    )


def refused_start(overlay: Overlay, config: Path) -> str:
    """Run overlay serve that must refuse to start; its one line of error."""
    result = overlay.run(SRV, str(BIN / "overlay"), "serve", "--config", str(config))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_the_lan_reaches_a_device_at_its_routable_address_judged_by_its_real_source(
    overlay: Overlay,
) -> None:
    nms = management_lan(overlay)
    overlay.server_config = lan_server(overlay, LAN)
    # Bad input first: nothing may start half-configured.
    assert "sysctl -w net.ipv4.ip_forward=1" in refused_start(overlay, overlay.server_config)
    netns.sysctl(SRV, "net.ipv4.ip_forward", "1")
    clash = lan_server(overlay, '[lan]\nprefix = "198.18.2.0/24"\n', pool="169.254.1.0/24")
    assert refused_start(overlay, clash).endswith(
        "lan.prefix 198.18.2.0/24 overlaps 198.18.2.1/24 on lan0, a network of this host: "
        "choose a prefix nobody uses"
    )
    overlay.server_config = lan_server(overlay, LAN)

    overlay.start_server()
    device = overlay.add_device("dev1")
    tunnel = overlay.start_device(device)
    assert tunnel is not None
    address = tunnel["address"]
    lan = "198.18.129." + address.rsplit(".", 1)[1]  # host bits kept
    (row,) = overlay.server_status()["sessions"]
    assert row["lan_address"] == lan
    assert overlay.server_status()["server"]["lan"]["services"] == ["udp/514 -> 198.18.2.10:5514"]
    metrics = overlay.run(SRV, "curl", "-sf", "http://127.0.0.1:9180/metrics").stdout
    assert f'lan_address="{lan}"' in metrics and "overlay_lan_address_info{" in metrics
    routes = overlay.run(device.ns, "ip", "-j", "route", "show", "dev", "ovl0", "proto", "250")
    assert [r["dst"] for r in json.loads(routes.stdout)] == ["198.18.2.0/24"]  # the hello's
    for port in (7002, 7003):
        listen(overlay, device.ns, address, port)

    # Allowed from 198.18.2.0/24, the NMS's real source: the echo comes back via the tunnel.
    sent = overlay.python(nms, "tests.integration.peer", "send", "tcp", lan, "7002", "20000")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    # 7003 only from 198.18.3.0/24: a translated source would have passed, the real one does not.
    assert not connects(nms, lan, 7003)
    flows = overlay.server_status()["totals"]["drops"]
    assert flows.get("policy", 0) >= 1
    # The device opens nothing on the LAN itself: only its replies go there.
    assert not connects(device.ns, NMS_IP, 22)

    # A service entry: syslog to 169.254.0.1:514 goes to the LAN's collector, from the
    # device's routable address.
    collector = overlay.spawn(nms, [sys.executable, "-c", COLLECT], "collector.log")
    wait_for("collector", lambda: "ready" in (overlay.root / "collector.log").read_text())
    overlay.run(device.ns, "logger", "-n", "169.254.0.1", "-P", "514", "-d", "hello-lan")
    line = wait_for(
        "the syslog line at the collector",
        lambda: [x for x in (overlay.root / "collector.log").read_text().splitlines()[1:] if x],
        timeout=10,
    )
    assert line[0].startswith(f"{lan} ") and "hello-lan" in line[0]
    collector.wait(timeout=5)

    overlay.stop_server()
    tables = overlay.run(SRV, "nft", "list", "tables")
    assert "overlay_lan" not in tables.stdout  # the node removes its table when it stops
