"""The overlay firewall with a real server and device: what passes, what is refused and
counted, rules changed at run time without dropping the tunnel, the flow limit."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.deploy import BIN, wait_for
from tests.integration.conftest import PASSWORD, SRV, Overlay, make_overlay

pytestmark = pytest.mark.netns

SERVER = "169.254.0.1"
# Besides the default profile: the management side may open TCP 7002 on devices.
RULES = deploy.firewall_rules('direction = "to-device"\nprotocol = "tcp"\nports = "7002"')


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, Path]) -> Iterator[Overlay]:
    """A server with the rules above, one device, and TCP listeners on both sides: the
    device listens on 7002 (allowed) and 8080 (not), the server on 7002 and 9000 (neither
    is a service the device may reach)."""
    for overlay in make_overlay(tmp_path_factory.mktemp("firewall"), pki):
        overlay.server_config = deploy.server_config(
            overlay.root / "server", overlay.pki_dir, PASSWORD, extra=RULES
        )
        overlay.start_server()
        device = overlay.add_device("dev1")
        overlay.start_device(device)
        for ns, address, port in (
            (device.ns, "169.254.1.1", 7002),
            (device.ns, "169.254.1.1", 8080),
            (SRV, SERVER, 9000),
        ):
            listen(overlay, ns, address, port)
        yield overlay


def listen(overlay: Overlay, ns: str, address: str, port: int) -> None:
    log = f"listen-{ns}-{port}.log"
    overlay.spawn(
        ns,
        [sys.executable, "-m", "tests.integration.peer", "serve", "tcp", address, str(port)],
        log,
    )
    wait_for("listener", lambda: "ready" in (overlay.root / log).read_text(), timeout=10)


def connects(ns: str, address: str, port: int) -> bool:
    """Whether a TCP connection opens within 2 s (bash's /dev/tcp: no client to install)."""
    probe = ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"]
    return netns.run(ns, probe).returncode == 0


def rule(overlay: Overlay, *args: str) -> subprocess.CompletedProcess[str]:
    assert overlay.server_config is not None
    return subprocess.run(
        [str(BIN / "overlay"), "rule", *args, "--config", str(overlay.server_config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def session(overlay: Overlay) -> dict:
    (row,) = overlay.server_status()["sessions"]
    return row


def test_allowed_ports_pass_and_others_are_dropped_and_counted(guarded: Overlay) -> None:
    before = session(guarded)["drops"].get("policy", 0)
    assert connects(SRV, "169.254.1.1", 7002)
    assert not connects(SRV, "169.254.1.1", 8080)
    assert not connects("ovlt-dev1", SERVER, 9000)
    assert not connects("ovlt-dev1", SERVER, 7002)  # the rule is for the other direction
    assert session(guarded)["drops"]["policy"] >= before + 3
    ping = netns.run(SRV, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "169.254.1.1"])
    assert ping.returncode == 0, ping.stdout
    ping = netns.run("ovlt-dev1", ["ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER])
    assert ping.returncode == 0, ping.stdout


def test_status_of_a_device_lists_its_flows(guarded: Overlay) -> None:
    assert connects(SRV, "169.254.1.1", 7002)
    assert guarded.server_config is not None
    flows = guarded.device_status("dev1")["flows"]
    assert {
        (f["protocol"], f["opened_by"], f["remote"], f["device_port"], f["rule"]) for f in flows
    } >= {("tcp", "management", SERVER, 7002, 20)}
    text = subprocess.run(
        [str(BIN / "overlay"), "status", "dev1", "--config", str(guarded.server_config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "169.254.0.1" in text and "7002" in text and "management" in text


def test_rules_change_at_run_time_without_touching_the_tunnel(guarded: Overlay) -> None:
    tunnel = session(guarded)
    added = rule(guarded, "add", "--number", "15", "--direction", "to-device",
                 "--protocol", "tcp", "--ports", "8080", "--source", "169.254.0.1/32",
                 "--comment", "web UI")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert connects(SRV, "169.254.1.1", 8080)

    listing = json.loads(rule(guarded, "list", "--json").stdout)
    assert [(r["number"], r.get("ports")) for r in listing["rules"]] == [
        (10, None),
        (15, "8080"),
        (20, "7002"),
    ]
    assert listing["rules"][1]["hits"] >= 1 and listing["source"].endswith("firewall-rules.json")

    assert rule(guarded, "move", "15", "30").returncode == 0
    assert rule(guarded, "renumber").returncode == 0
    listing = json.loads(rule(guarded, "list", "--json").stdout)
    assert [(r["number"], r.get("ports")) for r in listing["rules"]] == [
        (10, None),
        (20, "7002"),
        (30, "8080"),
    ]
    taken = rule(guarded, "add", "--number", "20", "--direction", "from-device")
    assert taken.returncode != 0
    assert taken.stderr.strip().endswith("make room with overlay rule renumber")
    assert "Traceback" not in taken.stderr

    assert rule(guarded, "remove", "30").returncode == 0
    assert not connects(SRV, "169.254.1.1", 8080)
    after = session(guarded)
    assert (after["session"], after["since"]) == (tunnel["session"], tunnel["since"])


def test_run_time_rules_survive_a_restart_until_reset(guarded: Overlay) -> None:
    assert rule(guarded, "add", "--direction", "to-device", "--protocol", "tcp",
                "--ports", "8080").returncode == 0  # fmt: skip
    guarded.stop_server()
    guarded.start_server()
    assert "firewall rules come from the state, not the config" in guarded.server_log.read_text()
    device = guarded.devices["dev1"]
    wait_for("tunnel back", deploy.tunnel_up(device.socket), log=device.log)
    assert "8080" in rule(guarded, "list").stdout
    assert connects(SRV, "169.254.1.1", 8080)
    reset = rule(guarded, "reset")
    assert reset.returncode == 0 and "rules from: config" in reset.stdout
    assert "8080" not in reset.stdout


def test_flows_past_the_limit_are_dropped_and_counted(
    overlay: Overlay, pki: tuple[Path, Path]
) -> None:
    overlay.server_config = deploy.server_config(
        overlay.root / "server",
        overlay.pki_dir,
        PASSWORD,
        extra="[firewall]\nmax_flows = 4\n"
        + deploy.firewall_rules('direction = "to-device"\nprotocol = "udp"\nports = "7002"'),
    )
    overlay.start_server()
    overlay.start_device(overlay.add_device("dev1"))
    # Ten datagrams from ten sockets: ten flows wanted, four allowed.
    burst = "for i in $(seq 10); do echo x > /dev/udp/169.254.1.1/7002; done"
    assert netns.run(SRV, ["bash", "-c", burst]).returncode == 0
    wait_for("flow-limit drops", lambda: session(overlay)["drops"].get("flow-limit") == 6)
    status = overlay.server_status()
    assert session(overlay)["flows"] == 4 and status["firewall"]["flows"] == 4
    metrics = netns.run(SRV, ["curl", "-s", "http://127.0.0.1:9180/metrics"]).stdout
    assert 'overlay_drops_total{reason="flow-limit"} 6.0' in metrics
    assert "overlay_flows 4.0" in metrics
    assert 'overlay_firewall_rule_hits_total{action="allow",rule="20"} 10.0' in metrics
