"""scripts/bench keeps working: CI runs its quick mode (numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import netns
from tests.integration.conftest import REPO

pytestmark = pytest.mark.netns


def test_quick_bench_measures_every_path_every_device_the_agent_and_the_lan(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "lab.bench", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reconnect storm, 50 simulated devices" in result.stdout
    results = json.loads(out.read_text())
    assert [row["path"] for row in results["paths"]] == ["direct", "overlay", "openvpn-tcp"]
    assert all(row["up_mbit"] > 0 and row["sparse_rtt_ms"] > 0 for row in results["paths"])
    reconnect = results["reconnect"]
    assert reconnect["same_addresses_after_sigterm"] is True
    assert reconnect["same_addresses_after_sigkill"] is True
    agent = results["agent"]
    assert [run["vrfs"] for run in agent["runs"]] == [1, 2]
    assert all(run["rss_kib"] > 0 and run["start_to_up_s"] > 0 for run in agent["runs"])
    assert agent["imports"][-1]["after"] == "the agent's own code"
    reach = results["reach"]
    assert [row["path"] for row in reach["paths"]] == ["node -> device", "NMS -> router -> device"]
    assert all(row["up_mbit"] > 0 and row["idle_rtt_ms"] > 0 for row in reach["paths"])
    assert reach["failover_real"]["reached"] == reach["failover_real"]["devices"] > 0
    assert reach["failover_real"]["same_lan_addresses"] is True
    assert reach["failover_loadgen"]["same_addresses"] is True
    assert netns.names("ovlb-") == [] and netns.names("ovl-") == []


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_quick_reconnect_storm_with_two_workers(tmp_path: Path, store: str) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "lab.bench", "--quick", "--part", "reconnect", "--workers", "2",
         "--store", store, "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    on = " on PostgreSQL" if store == "postgresql" else ""
    assert f"50 simulated devices, 2 server workers{on}\n" in result.stdout
    reconnect = json.loads(out.read_text())["reconnect"]
    assert (reconnect["workers"], reconnect["store"]) == (2, store)
    assert (reconnect["store_cpu_ms_per_tunnel"] is not None) == (store == "postgresql")
    assert reconnect["same_addresses_after_sigterm"] is True
    assert reconnect["same_addresses_after_sigkill"] is True
    assert not list(Path("/tmp").glob("ovl-bench-store-*"))  # its PostgreSQL is gone
    assert netns.names("ovlb-") == []
