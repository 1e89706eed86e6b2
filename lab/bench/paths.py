"""Part ``paths``: the direct path, the overlay and OpenVPN-TCP between the same two namespaces."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lab import deploy, netns
from lab.bench.measure import DEV, IPERF_RULE, SERVER_IP, SRV, measure, two_namespaces
from lab.bench.openvpn import openvpn_path
from lab.bench.profile import profile_overlay

PATHS = ("direct", "overlay", "openvpn-tcp")


def paths(
    work: Path,
    seconds: float,
    pings: int,
    which: list[str],
    mtu: int | None,
    profile: Path | None = None,
    codel: tuple[float, float] | None = None,
) -> list[dict[str, Any]]:
    """Direct veth, the overlay and OpenVPN-TCP (those in ``which``) between the same two
    namespaces; the overlay also with MTU ``mtu`` and with CoDel's ``codel``, when given."""
    two_namespaces(work, DEV)
    results = []
    if "direct" in which:
        results.append(measure("direct", None, SERVER_IP, seconds, pings))
    if "overlay" in which:  # the defaults, then each variant asked for as a row of its own
        results.append(overlay_path(work, seconds, pings, None, profile, None))
        if codel:
            results.append(overlay_path(work, seconds, pings, None, None, codel))
        if mtu:
            results.append(overlay_path(work, seconds, pings, mtu, None, None))
    if "openvpn-tcp" in which:
        results.append(openvpn_path(work, seconds, pings))
    return results


def queue_settings(codel: tuple[float, float] | None) -> str:
    """CoDel's target and interval for both ends' config, when not the defaults."""
    if codel is None:
        return ""
    return f"queue_target = {codel[0]}\nqueue_interval = {codel[1]}\n"


def overlay_path(
    work: Path,
    seconds: float,
    pings: int,
    mtu: int | None,
    profile: Path | None,
    codel: tuple[float, float] | None,
) -> dict[str, Any]:
    password = os.urandom(12).hex()
    ca = deploy.pki(work / "pki", [SERVER_IP])
    name = "overlay" + (f"-mtu{mtu}" if mtu else "") + ("-codel" if codel else "")
    config = deploy.server_config(
        work / name / "server",
        work / "pki",
        password,
        host=SERVER_IP,
        extra=IPERF_RULE,
        overlay=(f"mtu = {mtu}\n" if mtu else "") + queue_settings(codel),
    )
    server = deploy.start_server(SRV, config)
    device = deploy.appliance_config(
        work / name / "dev",
        "bench",
        [f"wss://{SERVER_IP}/tun"],
        ca,
        password,
        extra="[tun]\n" + queue_settings(codel),
    )
    agent = deploy.start_appliance(DEV, device)
    try:
        deploy.wait_for(
            "overlay up",
            deploy.tunnel_up(device.parent / "state" / "bench.sock"),
            timeout=30,
            log=device.parent / "appliance.log",
        )
        if profile is not None:
            profile_overlay(profile, {"server": server.pid, "device": agent.pid}, seconds)
        return measure(name, server.pid, "169.254.0.1", seconds, pings)
    finally:
        netns.stop(agent)
        netns.stop(server)
