"""One tunnel per VRF: two netns VRFs with the same underlay address, each behind its own NAT.

::

    ovlt-srv 198.18.0.1 (br0) ── ovlt-nata 198.18.0.21 ── lan 198.19.9.1 ── ovlt-vrfa 198.19.9.2
                              └─ ovlt-natb 198.18.0.22 ── lan 198.19.9.1 ── ovlt-vrfb 198.19.9.2

The agent runs in ``ovlt-dev`` (which has no uplink at all); VRF A reaches the
server by a name that resolves only inside A (/etc/netns/ovlt-vrfa/hosts).
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.deploy import BIN, wait_for
from lab.topology import masquerade
from overlay.namespace import in_netns
from tests.integration.conftest import PASSWORD, SRV, Overlay

pytestmark = pytest.mark.netns

ETC = Path("/etc/netns/ovlt-vrfa")
VRFS = """
[keepalive]
interval = 1
misses = 3

[[vrf]]
name = "vrf-a"
backend = "netns"
netns = "ovlt-vrfa"
urls = ["wss://overlay.test/tun"]

[[vrf]]
name = "vrf-b"
backend = "netns"
netns = "ovlt-vrfb"

[[vrf]]
name = "vrf-l3"
backend = "vrf"
device = "vrf-l3"
"""


@pytest.fixture
def vrfs(overlay: Overlay) -> Iterator[tuple[Overlay, Path]]:
    for side, wan in (("a", "198.18.0.21"), ("b", "198.18.0.22")):
        nat = overlay.attach(f"nat{side}", wan)
        vrf = f"ovlt-vrf{side}"
        netns.create(vrf)
        netns.veth(vrf, "eth0", nat, "lan0")
        netns.address(nat, "lan0", "198.19.9.1/24")
        netns.address(vrf, "eth0", "198.19.9.2/24")  # the same address in both VRFs
        netns.route(vrf, "0.0.0.0/0", "198.19.9.1")
        masquerade(nat, "198.19.9.0/24", "198.18.0.0/24")
    netns.create("ovlt-dev")
    shutil.rmtree(ETC, ignore_errors=True)
    ETC.mkdir(parents=True)
    try:
        (ETC / "hosts").write_text(Path("/etc/hosts").read_text() + "198.18.0.1 overlay.test\n")
        config = deploy.appliance_config(
            overlay.root / "dev",
            "dev1",
            ["wss://198.18.0.1/tun"],
            overlay.ca_file,
            PASSWORD,
            vrf=None,
            extra=VRFS,
        )
        overlay.start_server()
        yield overlay, config
    finally:
        shutil.rmtree(ETC, ignore_errors=True)
        if not any(Path("/etc/netns").iterdir()):
            Path("/etc/netns").rmdir()


def rows(socket_path: Path) -> dict[str, dict]:
    data = deploy.agent_status(socket_path)
    return {row["vrf"]: row for row in data["tunnels"]} if data else {}


def both_up(socket_path: Path) -> dict[str, dict] | None:
    found = rows(socket_path)
    ok = all(found.get(v, {}).get("state") == "up" for v in ("vrf-a", "vrf-b"))
    return found if ok else None


def captured(ns: str, seconds: float, action) -> int:  # type: ignore[no-untyped-def]
    """Packets to or from the server's TLS port seen on ``ns``'s uplink while ``action`` runs."""
    log = Path(f"/tmp/{ns}.tcpdump")
    log.unlink(missing_ok=True)
    process = netns.spawn(
        ns,
        ["tcpdump", "-i", "eth0", "-nn", "-q", "--immediate-mode", "-l", "tcp port 443"],
        log,
    )
    try:
        wait_for("tcpdump start", lambda: "listening on" in log.read_text(), process=process)
        action()
        time.sleep(seconds)
    finally:
        netns.stop(process)
    return log.read_text().count("198.18.0.1.443")


def test_one_tunnel_per_vrf(vrfs: tuple[Overlay, Path]) -> None:
    overlay, config = vrfs
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("overlay.test", 443)  # only VRF A can resolve this name
    agent = deploy.start_appliance("ovlt-dev", config)
    overlay.processes.append(agent)
    control = config.parent / "state" / "dev1.sock"
    up = wait_for(
        "both VRF tunnels up",
        lambda: both_up(control),
        timeout=30,
        log=config.parent / "appliance.log",
    )
    a, b = up["vrf-a"], up["vrf-b"]
    assert a["address"] != b["address"]
    assert (a["backend"], b["backend"]) == ("netns ovlt-vrfa", "netns ovlt-vrfb")
    assert a["server"] == "wss://overlay.test/tun"

    refused = up["vrf-l3"]
    assert refused["state"] == "refused"
    assert "this kernel has no VRF (l3mdev) support" in refused["last_error"]

    sessions = {s["vrf"]: s for s in overlay.server_status()["sessions"]}
    assert {v: (s["device"], s["address"], s["peer"]) for v, s in sessions.items()} == {
        "vrf-a": ("dev1", a["address"], "198.18.0.21"),  # each left through its own NAT
        "vrf-b": ("dev1", b["address"], "198.18.0.22"),
    }

    def ping_through(vrf: str) -> None:
        assert (
            netns.run(
                f"ovlt-{vrf}", ["ping", "-c", "20", "-i", "0.05", "-W", "2", "169.254.0.1"]
            ).returncode
            == 0
        )

    assert captured("ovlt-vrfa", 0.5, lambda: ping_through("vrfa")) >= 40
    assert captured("ovlt-vrfb", 0.5, lambda: ping_through("vrfa")) < 10
    assert captured("ovlt-vrfb", 0.5, lambda: ping_through("vrfb")) >= 40

    status = netns.run("ovlt-dev", [str(BIN / "appliance"), "status", "--config", str(config)])
    assert status.returncode == 3, status.stderr  # not every tunnel is up: vrf-l3 is refused
    assert status.stdout.count(" up ") == 2 and "refused" in status.stdout


def test_cutting_one_vrf_leaves_the_other_alone(vrfs: tuple[Overlay, Path]) -> None:
    overlay, config = vrfs
    overlay.processes.append(deploy.start_appliance("ovlt-dev", config))
    control = config.parent / "state" / "dev1.sock"
    before = wait_for(
        "both up", lambda: both_up(control), timeout=30, log=config.parent / "appliance.log"
    )
    netns.link_state("ovlt-nata", "lan0", up=False)
    try:
        wait_for("vrf-a down", lambda: rows(control)["vrf-a"]["state"] != "up", timeout=15)
        assert rows(control)["vrf-b"]["state"] == "up"
        assert rows(control)["vrf-b"]["since"] == before["vrf-b"]["since"]  # never restarted
        ping = netns.run("ovlt-vrfb", ["ping", "-c", "3", "-i", "0.2", "-W", "2", "169.254.0.1"])
        assert ping.returncode == 0
    finally:
        netns.link_state("ovlt-nata", "lan0", up=True)
    back = wait_for("vrf-a back", lambda: both_up(control), timeout=30)
    assert back["vrf-a"]["address"] == before["vrf-a"]["address"]


def test_an_agent_whose_only_vrf_is_refused_exits_with_one_line(overlay: Overlay) -> None:
    config = deploy.appliance_config(
        overlay.root / "l3",
        "dev9",
        ["wss://198.18.0.1/tun"],
        overlay.ca_file,
        PASSWORD,
        vrf=None,
        extra='[[vrf]]\nname = "l3"\nbackend = "vrf"\n',
    )
    result = netns.run(SRV, [str(BIN / "appliance"), "run", "--config", str(config)])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no VRF can run: this kernel has no VRF (l3mdev) support, so VRF device 'l3' "
        'cannot exist; use backend = "netns"'
    )


def test_the_tun_of_a_netns_vrf_lives_in_that_namespace(vrfs: tuple[Overlay, Path]) -> None:
    overlay, config = vrfs
    overlay.processes.append(deploy.start_appliance("ovlt-dev", config))
    wait_for("both up", lambda: both_up(config.parent / "state" / "dev1.sock"), timeout=30)
    for ns, present in (("ovlt-vrfa", True), ("ovlt-vrfb", True), ("ovlt-dev", False)):
        with in_netns(ns):
            names = [name for _, name in socket.if_nameindex()]
        assert ("ovl0" in names) is present, (ns, names)


def test_a_vrf_whose_namespace_comes_later_waits_and_then_comes_up(overlay: Overlay) -> None:
    """The network configuration makes the namespace after the agent started: the VRF waits
    (status says why, and exits 3), the agent stays up, and the tunnel comes when it can."""
    config = deploy.appliance_config(
        overlay.root / "late",
        "dev7",
        ["wss://198.18.0.1/tun"],
        overlay.ca_file,
        PASSWORD,
        vrf=None,
        extra='[[vrf]]\nname = "late"\nbackend = "netns"\nnetns = "ovlt-late"\n',
    )
    overlay.start_server()
    netns.create("ovlt-dev")
    agent = deploy.start_appliance("ovlt-dev", config)
    overlay.processes.append(agent)
    control = config.parent / "state" / "dev7.sock"
    waiting = wait_for("the VRF waiting", lambda: rows(control).get("late"), timeout=20)
    assert waiting["state"] == "waiting"
    assert "network namespace 'ovlt-late' does not exist" in waiting["last_error"]
    status = netns.run("ovlt-dev", [str(BIN / "appliance"), "status", "--config", str(config)])
    assert status.returncode == 3 and "waiting" in status.stdout
    overlay.attach("late", "198.18.0.31")  # the namespace, on the underlay, a little late
    up = wait_for(
        "the late VRF up",
        lambda: rows(control).get("late", {}).get("state") == "up",
        timeout=40,
        process=agent,
        log=config.parent / "appliance.log",
    )
    assert up and agent.poll() is None
    status = netns.run("ovlt-dev", [str(BIN / "appliance"), "status", "--config", str(config)])
    assert status.returncode == 0, status.stdout
