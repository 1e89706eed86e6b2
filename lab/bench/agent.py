"""Part ``agent``: the device agent's weight on a small gateway. RSS and threads of an idle
agent with one and with two VRFs, the time from its start to every tunnel up, its CPU
time and wake-ups while idle between keepalives, and where its memory goes, module by
module (fresh interpreters, each importing one more piece)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import deploy, netns
from lab.bench.measure import DEV, SERVER_IP, SRV, cpu_seconds, rss_kib, two_namespaces

TWO_VRFS = """
[[vrf]]
name = "main-vrf"

[[vrf]]
name = "voice-vrf"
"""
# What the agent's memory is made of: each row imports one more piece than the row before.
IMPORTS = (
    ("python", ""),
    ("asyncio, ssl", "import asyncio, ssl"),
    ("aiohttp (the WebSocket client)", "import aiohttp"),
    ("aiohttp.web (the control socket)", "import aiohttp.web"),
    ("structlog, uvloop, pytun", "import structlog, uvloop, pytun"),
    ("the agent's own code", "import appliance.cli"),
)


def agent(work: Path, idle_seconds: float) -> dict[str, Any]:
    two_namespaces(work, DEV)
    password = os.urandom(12).hex()
    ca = deploy.pki(work / "pki", [SERVER_IP])
    config = deploy.server_config(work / "server", work / "pki", password, host=SERVER_IP)
    server = deploy.start_server(SRV, config)
    try:
        deploy.wait_for(
            "server start",
            lambda: deploy.server_status(config.parent / "state" / "control.sock"),
            process=server,
            log=config.parent / "server.log",
        )
        runs = [
            idle_agent(work / f"vrfs{count}", ca, password, count, idle_seconds) for count in (1, 2)
        ]
    finally:
        netns.stop(server)
    return {"idle_seconds": idle_seconds, "runs": runs, "imports": import_weights()}


def idle_agent(
    directory: Path, ca: Path, password: str, vrfs: int, idle_seconds: float
) -> dict[str, Any]:
    """Start one agent, time it to up, then watch it idle (the server pings every 60 s)."""
    device = deploy.appliance_config(
        directory,
        "bench",
        [f"wss://{SERVER_IP}/tun"],
        ca,
        password,
        vrf="default" if vrfs == 1 else None,
        extra="" if vrfs == 1 else TWO_VRFS,
    )
    control = device.parent / "state" / "bench.sock"
    started = time.monotonic()
    process = deploy.start_appliance(DEV, device)
    try:
        rows = deploy.wait_for(
            "agent up",
            deploy.tunnels_up(control),
            timeout=30,
            process=process,
            log=device.parent / "appliance.log",
        )
        up = time.monotonic() - started
        assert len(rows) == vrfs
        time.sleep(2)  # settled
        cpu, switches = cpu_seconds(process.pid), context_switches(process.pid)
        time.sleep(idle_seconds)
        cpu_idle = cpu_seconds(process.pid) - cpu
        wakeups = context_switches(process.pid) - switches
        return {
            "vrfs": vrfs,
            "start_to_up_s": round(up, 3),
            "rss_kib": rss_kib(process.pid),
            "threads": threads(process.pid),
            "idle_cpu_s_per_hour": round(cpu_idle * 3600 / idle_seconds, 2),
            "idle_wakeups": wakeups,
        }
    finally:
        netns.stop(process)


def threads(pid: int) -> list[str]:
    """The names of a process's threads (the first is the main thread)."""
    return sorted(
        (Path(f"/proc/{pid}/task/{task}/comm").read_text().strip())
        for task in os.listdir(f"/proc/{pid}/task")
    )


def context_switches(pid: int) -> int:
    """How often the process's threads have slept and woken so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def import_weights() -> list[dict[str, Any]]:
    """RSS of a fresh interpreter after each row's imports (and all the rows' before it)."""
    rows, done = [], []
    for name, statement in IMPORTS:
        done.append(statement)
        code = "\n".join(
            [*done, "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"]
        )
        measured = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        rows.append({"after": name, "rss_kib": int(measured.stdout)})
    return rows


def format_agent(results: dict[str, Any]) -> list[str]:
    lines = [f"agent (idle for {results['idle_seconds']} s between keepalives)"]
    for run in results["runs"]:
        lines.append(
            f"  {run['vrfs']} VRF{'s' if run['vrfs'] > 1 else ' '}  up in "
            f"{run['start_to_up_s']:.2f} s, RSS {run['rss_kib'] / 1024:.1f} MB, "
            f"{len(run['threads'])} threads ({', '.join(run['threads'])}), idle CPU "
            f"{run['idle_cpu_s_per_hour']} s/hour, {run['idle_wakeups']} wake-ups"
        )
    previous = 0
    for row in results["imports"]:
        lines.append(
            f"  memory after {row['after']:<33} {row['rss_kib'] / 1024:>6.1f} MB "
            f"(+{(row['rss_kib'] - previous) / 1024:.1f})"
        )
        previous = row["rss_kib"]
    return lines
