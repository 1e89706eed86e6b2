"""The lab with a fleet: ``scripts/lab up --servers 2``, a failover, the lab's commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lab import checks, netns
from lab.__main__ import bring_home
from lab.deploy import wait_for
from lab.topology import NMS, VRF, Lab, lan_address
from tests.integration.test_lab import lab_cli

pytestmark = pytest.mark.netns


def test_a_fleet_lab_keeps_a_device_address_across_a_failover() -> None:
    """``scripts/lab up --servers 2``: the device fails over from srv to srv2 with the same
    overlay address, and comes back to nobody's loss when srv starts again."""
    directory = Path(f"/tmp/ovl-test-fleet-lab-{os.getpid()}")  # postgres must enter it
    try:
        up = lab_cli(directory, "up", "--devices", "1", "--servers", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(lab_cli(directory, "status", "--json").stdout)
        assert [(s["name"], s["netns"], s["url"], s["state"]) for s in status["servers"]] == [
            ("srv", "ovl-srv", "wss://198.18.0.1:443/tun", "up"),
            ("srv2", "ovl-srv2", "wss://198.18.0.2:443/tun", "up"),
        ]
        assert status["server"]["netns"] == "ovl-srv"  # node 1, as before the fleet
        before = {d["vrf"]: (d["overlay"], d["server"]) for d in status["devices"]}
        assert {server for _, server in before.values()} == {"srv"}

        stopped = lab_cli(directory, "stop", "srv")
        assert stopped.returncode == 0, stopped.stderr
        lab = Lab(directory)
        wait_for(
            "the device on srv2",
            lambda: (
                {d["server"] for d in lab.status()["devices"] if d["state"] == "up"} == {"srv2"}
                and all(d["state"] == "up" for d in lab.status()["devices"])
            ),
            timeout=60,
        )
        after = {d["vrf"]: d["overlay"] for d in lab.status()["devices"]}
        assert after == {vrf: address for vrf, (address, _) in before.items()}
        # The NMS finds the device again at the same LAN address, now through srv2.
        (device,) = lab.devices()
        lan = next(d["lan"] for d in lab.status()["devices"] if d["vrf"] == VRF)
        assert lan == lan_address(before[VRF][0])
        wait_for(
            "the NMS reaching the moved device",
            lambda: checks.snmp_get(lab, device, lan, "v2c", NMS, timeout=1)[0],
            timeout=30,
        )
        assert next_hops(lab, lan) == ["198.18.1.2"]  # srv2's LAN address

        started = lab_cli(directory, "start", "srv")
        assert started.returncode == 0, started.stderr
        # What the demo does after its failover: the devices go back to srv, the checks' node.
        bring_home(lab)
        assert {d["server"] for d in lab.status()["devices"]} == {"srv"}
        assert [s["state"] for s in lab.status()["servers"]] == ["up", "up"]
        wait_for(
            "the router's route to the device through srv again",
            lambda: next_hops(lab, lan) == ["198.18.1.1"],
            timeout=30,
        )
        assert lab_cli(directory, "kill", "srv3").stderr.strip() == (
            "error: no server 'srv3' in the lab (have: srv, srv2)"
        )
    finally:
        lab_cli(directory, "down")
    assert not netns.names("ovl-")
    assert not directory.exists()


def test_the_demo_passes_with_two_workers_and_a_killed_server_comes_back() -> None:
    """``scripts/lab demo --workers 2``: every check of the lab contract passes with the
    server's tunnels spread over two workers on its SQLite store; ``scripts/lab kill
    server`` kills every worker with the supervisor, and the devices come back with their
    addresses."""
    directory = Path(f"/tmp/ovl-test-workers-lab-{os.getpid()}")
    try:
        demo = lab_cli(directory, "demo", "--workers", "2", timeout=600)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert " FAIL " not in demo.stdout and demo.stdout.count(" pass ") >= 20
        lab = Lab(directory)
        workers = lab.status()["servers"][0]["workers"]
        assert [w["up"] for w in workers] == [True, True]
        before = {(d["name"], d["vrf"]): d["overlay"] for d in lab.status()["devices"]}
        killed = lab_cli(directory, "kill", "server")
        assert killed.returncode == 0, killed.stderr
        assert len(killed.stdout.split("(")[1].split(",")) == 3  # the supervisor and 2 workers
        lab.wait_tunnels(timeout=60)
        after = {(d["name"], d["vrf"]): d["overlay"] for d in lab.status()["devices"]}
        assert after == before
    finally:
        lab_cli(directory, "down")
    assert not netns.names("ovl-")


def next_hops(lab: Lab, lan: str) -> list[str]:
    """The router's next hops to a device's LAN address."""
    route = json.loads(lab.frr.vtysh(f"show ip route {lan}/32 json"))[f"{lan}/32"][0]
    return [hop["ip"] for hop in route["nexthops"]]
