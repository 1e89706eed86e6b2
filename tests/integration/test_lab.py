"""The lab as an operator uses it: up, status --json, every management service, tcpdump, down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import checks, netns
from lab.deploy import wait_for
from lab.topology import Lab
from tests.integration.conftest import REPO

pytestmark = pytest.mark.netns

SERVICES = [
    "ping device->server",
    "ping server->device",
    "nat blocks underlay",
    "snmp v2c get",
    "snmp v3 authPriv get",
    "syslog udp",
    "syslog tcp",
    "ntp",
    "qoe report",
    "http download",
    "nms snmp v2c get",
    "nms snmp v3 get",
    "nms refused port",
]


def lab_cli(directory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"OVL_LAB_DIR": str(directory)},
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """``scripts/lab up`` with two devices, removed with ``scripts/lab down`` after the module."""
    directory = Path(f"/tmp/ovl-test-lab-{os.getpid()}")  # FRR's user must enter it
    try:
        up = lab_cli(directory, "up", "--devices", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        yield Lab(directory)
    finally:
        lab_cli(directory, "down")


def test_status_json_follows_the_lab_contract(lab: Lab) -> None:
    status = json.loads(lab_cli(lab.dir, "status", "--json").stdout)
    assert status["dir"] == str(lab.dir)
    assert status["server"]["admin"] == "http://127.0.0.1:9180"
    assert {k: status["server"][k] for k in ("netns", "overlay", "url")} == {
        "netns": "ovl-srv",
        "overlay": "169.254.0.1",
        "url": "wss://198.18.0.1:443/tun",
    }
    assert [
        (d["name"], d["netns"], d["vrf"], d["underlay"], d["state"]) for d in status["devices"]
    ] == [
        ("dev1", "ovl-dev1", "main-vrf", "198.19.1.11", "up"),
        ("dev1", "ovl-dev1-voice", "voice-vrf", "198.19.101.11", "up"),  # a second VRF (netns)
        ("dev2", "ovl-dev2", "main-vrf", "198.19.2.11", "up"),
    ]
    addresses = sorted(d["overlay"] for d in status["devices"])
    assert addresses == ["169.254.1.1", "169.254.1.2", "169.254.1.3"]  # in order of arrival
    assert all(d["id"] for d in status["devices"])
    assert status["lan"] == {"router": "ovl-lan", "nms": "ovl-nms", "prefix": "198.18.128.0/17"}
    assert sorted(d["lan"] for d in status["devices"]) == [
        "198.18.129.1",
        "198.18.129.2",
        "198.18.129.3",
    ]
    assert lab.router_routes() == {f"{d['lan']}/32" for d in status["devices"]}


def test_up_twice_changes_nothing(lab: Lab) -> None:
    before = lab.status()
    again = lab_cli(lab.dir, "up", "--devices", "2")
    assert again.returncode == 0, again.stderr
    assert lab.status() == before


@pytest.mark.parametrize("device", ["dev1", "dev2"])
@pytest.mark.parametrize("service", SERVICES)
def test_service_through_the_overlay(lab: Lab, service: str, device: str) -> None:
    check = next(c for name, d, c in checks.all_checks(lab) if name == service and d.name == device)
    ok, detail = check()
    assert ok, detail


@pytest.mark.parametrize("check", ["voice-vrf ->server", "server->voice-vrf"])
def test_second_vrf_of_dev1_through_its_own_tunnel(lab: Lab, check: str) -> None:
    run = next(c for name, d, c in checks.all_checks(lab) if name == check and d.name == "dev1")
    ok, detail = run()
    assert ok, detail


def test_tcpdump_on_the_server_tun_shows_each_service(lab: Lab) -> None:
    address = next(d["overlay"] for d in lab.status()["devices"] if d["name"] == "dev1")
    pcap = lab.dir / "services.pcap"
    capture = netns.spawn(
        "ovl-srv",
        [
            "tcpdump",
            "-i",
            "ovl0",
            "-U",
            "--immediate-mode",
            "-nn",
            "-w",
            str(pcap),
            "host",
            address,
        ],
        lab.dir / "tcpdump.log",
    )
    try:
        wait_for("tcpdump start", lambda: "listening on" in (lab.dir / "tcpdump.log").read_text())
        for name, device, check in checks.all_checks(lab):
            if device.name == "dev1" and name in (
                "snmp v2c get",
                "syslog udp",
                "syslog tcp",
                "ntp",
                "qoe report",
            ):
                assert check()[0], name
        time.sleep(0.5)
    finally:
        netns.stop(capture)
    lines = netns.run("ovl-srv", ["tcpdump", "-nn", "-r", str(pcap)]).stdout
    a = re.escape(address)
    expected = {
        "snmp request": rf"169\.254\.0\.1\.\d+ > {a}\.161: .*GetRequest",
        "snmp response": rf"{a}\.161 > 169\.254\.0\.1\.\d+: .*GetResponse",
        "syslog udp": rf"{a}\.\d+ > 169\.254\.0\.1\.514: SYSLOG",
        "syslog tcp": rf"{a}\.\d+ > 169\.254\.0\.1\.514: Flags \[P",
        "ntp request": rf"{a}\.\d+ > 169\.254\.0\.1\.123: NTPv\d, Client",
        "ntp response": rf"169\.254\.0\.1\.123 > {a}\.\d+: NTPv\d, Server",
        "qoe": rf"{a}\.\d+ > 169\.254\.0\.1\.5001: Flags \[P",
    }
    missing = [name for name, pattern in expected.items() if not re.search(pattern, lines)]
    assert not missing, f"not in the capture: {missing}\n{lines[-3000:]}"


def test_server_cannot_reach_a_device_except_through_the_overlay(lab: Lab) -> None:
    device = lab.devices()[0]
    blocked, detail = checks.nat_blocks_underlay(device)
    assert blocked, detail
    address = next(d["overlay"] for d in lab.status()["devices"] if d["name"] == device.name)
    assert checks.ping("ovl-srv", address)[0]


def test_kill_server_keeps_every_address(lab: Lab) -> None:
    assigned = {(d["name"], d["vrf"]): d["overlay"] for d in lab.status()["devices"]}
    kill = lab_cli(lab.dir, "kill", "server")
    assert kill.returncode == 0, kill.stderr

    def back() -> bool:
        rows = lab.status()["devices"]
        return {(d["name"], d["vrf"]): (d["overlay"], d["state"]) for d in rows} == {
            key: (address, "up") for key, address in assigned.items()
        }

    wait_for("every (device, VRF) back after kill server", back, timeout=30)
    assert checks.ping("ovl-srv", assigned[("dev2", "main-vrf")])[0]
    assert checks.ping("ovl-srv", assigned[("dev1", "voice-vrf")])[0]


def test_down_removes_everything_also_after_a_failed_up(lab: Lab) -> None:
    down = lab_cli(lab.dir, "down")
    assert down.returncode == 0
    assert netns.names("ovl-") == []
    assert not lab.dir.exists()
    # what a failed `up` leaves: some namespaces, a process inside one, a lab dir
    netns.create("ovl-srv")
    netns.create("ovl-dev1")
    netns.spawn("ovl-dev1", ["sleep", "300"], Path("/dev/null"))
    lab.dir.mkdir(parents=True)
    assert lab_cli(lab.dir, "down").returncode == 0
    assert netns.names("ovl-") == []
    assert not lab.dir.exists()
