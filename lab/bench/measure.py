"""The bench's two namespaces and what it measures on any path: throughput, RTT, CPU, memory."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import deploy, netns

PREFIX = "ovlb-"
SRV, GEN, DEV = "ovlb-srv", "ovlb-gen", "ovlb-dev"
SERVER_IP = "198.18.0.1"
REPO = Path(__file__).resolve().parents[2]

# iperf3 on the server's overlay address: the device opens its flows (both with -R).
IPERF_RULE = deploy.firewall_rules('direction = "from-device"\nprotocol = "tcp"\nports = "5201"')


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's workers, PostgreSQL's backends), children
    before their parent."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            found = [int(child) for child in children.read().split()]
    except FileNotFoundError:
        return []
    return [p for child in found for p in tree(child)] + [pid]


def tree_rss_kib(pid: int) -> int:
    return int(_over_tree(pid, rss_kib))


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and of its descendants alive now."""
    return _over_tree(pid, cpu_seconds)


def _over_tree(pid: int, measure: Callable[[int], float]) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(FileNotFoundError):  # it ended meanwhile
            total += measure(p)
    return total


def two_namespaces(work: Path, client: str) -> None:
    """The server's namespace and ``client``'s, joined by a veth: 198.18.0.1 and .2."""
    work.mkdir(parents=True, exist_ok=True)
    netns.create(SRV)
    netns.create(client)
    netns.veth(SRV, "eth0", client, "eth0")
    netns.address(SRV, "eth0", f"{SERVER_IP}/24")
    netns.address(client, "eth0", "198.18.0.2/24")


def iperf(
    client_ns: str,
    server_ns: str,
    address: str,
    seconds: float,
    reverse: bool,
    extra: tuple[str, ...] = (),
    port: int = 5201,
    bind: str | None = None,
) -> float:
    """TCP throughput in Mbit/s from ``client_ns`` to ``address`` (the other way with
    reverse); the server listens on ``bind`` (default: ``address``) and ``port``."""
    server = netns.spawn(
        server_ns,
        ["iperf3", "-s", "-1", "-B", bind or address, "-p", str(port)],
        Path("/dev/null"),
    )
    try:
        time.sleep(0.5)
        argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J", *extra]
        result = netns.run(client_ns, argv + (["-R"] if reverse else []), timeout=seconds + 60)
        data = json.loads(result.stdout)
        return round(float(data["end"]["sum_received"]["bits_per_second"]) / 1e6, 1)
    finally:
        netns.stop(server)


def ping_rtt(ns: str, address: str, count: int, interval: float) -> float:
    """The median RTT in ms of ``count`` pings: under load a few pings that meet a
    burst or a drop would move the mean more than the queue does."""
    result = netns.run(
        ns,
        ["ping", "-n", "-c", str(count), "-i", str(interval), address],
        timeout=count * interval + 30,
    )
    times = [
        float(x.split("time=")[1].split()[0]) for x in result.stdout.splitlines() if "time=" in x
    ]
    return round(float(statistics.median(times)), 3)


def measure(
    name: str, server_pid: int | None, address: str, seconds: float, pings: int
) -> dict[str, Any]:
    """One path: throughput both ways, idle RTT (pings 10 ms apart, and a tenth as many
    1 s apart, the way SNMP polls come), RTT under load, server CPU per Gbit."""
    before = cpu_seconds(server_pid) if server_pid else 0.0
    up = iperf(DEV, SRV, address, seconds, reverse=False)
    used = (cpu_seconds(server_pid) - before) if server_pid else None
    down = iperf(DEV, SRV, address, seconds, reverse=True)
    idle = ping_rtt(DEV, address, pings, 0.01)
    sparse = ping_rtt(DEV, address, max(pings // 10, 5), 1.0)
    for ns in (SRV, DEV):  # a 200 Mbit bottleneck on both underlay ends
        netns.run(
            ns,
            [
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                "200mbit",
                "burst",
                "64kb",
                "latency",
                "400ms",
            ],
            check=True,
        )
    try:
        server = netns.spawn(SRV, ["iperf3", "-s", "-1", "-B", address], Path("/dev/null"))
        time.sleep(0.5)
        load = netns.spawn(
            DEV, ["iperf3", "-c", address, "-t", str(seconds + 2), "-C", "cubic"], Path("/dev/null")
        )
        time.sleep(1.5)  # past slow start
        loaded = ping_rtt(DEV, address, int(seconds * 10), 0.05)
        netns.stop(load)
        netns.stop(server)
    finally:
        for ns in (SRV, DEV):
            netns.run(ns, ["tc", "qdisc", "del", "dev", "eth0", "root"])
    gbit = up * seconds / 1000
    return {
        "path": name,
        "up_mbit": up,
        "down_mbit": down,
        "idle_rtt_ms": idle,
        "sparse_rtt_ms": sparse,
        "loaded_rtt_ms": loaded,
        "server_cpu_s_per_gbit": round(used / gbit, 2) if used is not None and gbit else None,
    }
