"""No device can hurt the others: one device floods the server through its tunnel (allowed
packets, refused packets, new flows in turn) while another's ping stays near its idle
RTT, its tunnel stays up, and a third device's handshake completes.

The bound asserted here is loose (a shared CI machine); the measured figures are printed
and go into docs/security.md. Before the containment work the other device's ping
averaged 1,067 ms under such a flood."""

from __future__ import annotations

import json
import statistics
import sys
import time

import pytest

from lab import netns
from tests.integration.conftest import Overlay

pytestmark = pytest.mark.netns
MODES = ("allowed", "refused", "new-flows")  # allowed first: its one flow opens


def ping_ms(overlay: Overlay, ns: str, count: int = 40) -> list[float]:
    result = netns.run(ns, ["ping", "-n", "-c", str(count), "-i", "0.05", "169.254.0.1"], 30)
    return [
        float(x.split("time=")[1].split()[0]) for x in result.stdout.splitlines() if "time=" in x
    ]


def test_one_device_flooding_does_not_hurt_another(overlay: Overlay) -> None:
    overlay.start_server()
    flooder, victim, newcomer = (overlay.add_device(n) for n in ("dev1", "dev2", "dev3"))
    first = overlay.start_device(flooder)
    overlay.start_device(victim)
    assert first is not None
    session = {s["device"]: s["session"] for s in overlay.server_status()["sessions"]}["dev2"]
    idle = statistics.median(ping_ms(overlay, victim.ns))
    figures: dict[str, object] = {"idle_ms": idle}
    for mode in MODES:
        flood = overlay.spawn(
            flooder.ns,
            [sys.executable, "-m", "tests.integration.flood", first["address"], mode, "8"],
            f"flood-{mode}.log",
        )
        time.sleep(1)
        if mode == "allowed":
            overlay.start_device(newcomer)  # a handshake completes during the flood
        loaded = ping_ms(overlay, victim.ns)
        flood.wait(30)
        figures[mode] = {
            "median_ms": statistics.median(loaded),
            "mean_ms": round(statistics.mean(loaded), 3),
            "max_ms": max(loaded),
            "replies": len(loaded),
        }
        assert len(loaded) >= 38, mode
        assert statistics.median(loaded) < idle + 10, (mode, figures)
    status = overlay.server_status()
    sessions = {s["device"]: s["session"] for s in status["sessions"]}
    assert sessions["dev2"] == session  # the victim's tunnel never went down
    assert "dev3" in sessions
    assert status["refusals"].get("refused-traffic", 0) >= 1  # the flooder was closed
    print("containment", json.dumps(figures))
