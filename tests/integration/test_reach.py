"""Routes per tunnel, announced by BIRD to an FRR router over BGP (with BFD)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import deploy
from lab.deploy import BIN
from lab.routing import Bird, Frr, frr_peer_config
from tests.integration.conftest import PASSWORD, SERVER_IP, SRV, Overlay

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
