"""The lab as an operator uses it: up, status --json, demo checks, kill server, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.deploy import wait_for
from tests.integration.conftest import REPO

pytestmark = pytest.mark.netns


def lab(directory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"OVL_LAB_DIR": str(directory)},
    )


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "lab"
    try:
        yield directory
    finally:
        lab(directory, "down")


def test_lab_up_status_demo_kill_and_down(lab_dir: Path) -> None:
    up = lab(lab_dir, "up", "--devices", "2")
    assert up.returncode == 0, up.stdout + up.stderr

    status = json.loads(lab(lab_dir, "status", "--json").stdout)
    assert status["dir"] == str(lab_dir)
    assert status["server"] | {"state": None, "sessions": None} == {
        "netns": "ovl-srv",
        "overlay": "169.254.0.1",
        "url": "wss://198.18.0.1:443/tun",
        "state": None,
        "sessions": None,
    }
    assert [
        (d["name"], d["netns"], d["vrf"], d["underlay"], d["state"]) for d in status["devices"]
    ] == [
        ("dev1", "ovl-dev1", "main-vrf", "198.19.1.11", "up"),
        ("dev2", "ovl-dev2", "main-vrf", "198.19.2.11", "up"),
    ]
    assigned = {d["name"]: d["overlay"] for d in status["devices"]}
    assert sorted(assigned.values()) == ["169.254.1.1", "169.254.1.2"]  # in order of arrival
    assert all(d["id"] for d in status["devices"])

    again = lab(lab_dir, "up", "--devices", "2")  # idempotent: nothing is rebuilt
    assert again.returncode == 0

    demo = lab(lab_dir, "demo", "--devices", "2")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.count(" pass ") == 6
    assert "nat blocks underlay    dev1    pass" in demo.stdout
    assert "ip netns exec ovl-srv tcpdump -ni ovl0" in demo.stdout

    kill = lab(lab_dir, "kill", "server")
    assert kill.returncode == 0, kill.stderr

    def back() -> bool:
        rows = json.loads(lab(lab_dir, "status", "--json").stdout)["devices"]
        return {d["name"]: (d["overlay"], d["state"]) for d in rows} == {
            name: (address, "up") for name, address in assigned.items()
        }

    wait_for("devices back after kill server", back, timeout=30)
    ping = netns.run("ovl-srv", ["ping", "-c", "1", "-W", "2", assigned["dev2"]])
    assert ping.returncode == 0

    down = lab(lab_dir, "down")
    assert down.returncode == 0
    assert netns.names("ovl-") == []
    assert not lab_dir.exists()
