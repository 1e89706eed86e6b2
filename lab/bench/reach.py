"""Part ``reach``: the management LAN reaching devices through FRR, across a node's death.

It builds the lab (``lab.topology``) with two nodes in a directory of its own and
measures, in this order:

1. throughput and RTT from the NMS to a device through the router, against from
   the node that holds the device (``ovl-srv``, over its TUN);
2. how fast BIRD and FRR move routes in this setup: N kernel routes of protocol
   250 added at once on node 2, until FRR has them all; then deleted;
3. the lab's real devices: the node holding them is SIGKILLed; for each device,
   the time until the NMS's pings (every 50 ms) are answered again at the same
   LAN address, through the other node;
4. the load generator's devices (10,000 by default) in the fleet: node 1 is
   SIGKILLed; the time until the router has all of their routes from node 2.

The lab's namespaces are the operator's lab's (``ovl-*``): it refuses to run
while a lab is up.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import deploy, netns
from lab.bench.measure import REPO, iperf, ping_rtt
from lab.bench.reconnect import Events
from lab.topology import NAT, NMS, SRV, VRF, Lab, Server

IPERF_PORT = 443  # a port the lab's rules (ovoc-management) let the LAN open towards devices
ROUTE_BASE = 0xC612A000  # 198.18.160.0: inside the routable pool, clear of the lab's devices


def reach(
    work: Path, devices: int, real_devices: int, seconds: float, pings: int
) -> dict[str, Any]:
    if netns.exists(SRV):
        raise RuntimeError("a lab is up: run scripts/lab down first (this part builds its own)")
    lab = Lab(work, auto_enroll=True)
    try:
        lab.up(real_devices, servers=2)
        lab.wait_tunnels()
        results: dict[str, Any] = {"real_devices": real_devices, "loadgen_devices": devices}
        results["paths"] = lan_paths(lab, seconds, pings)
        results["route_rate"] = route_rate(lab, devices)
        results["failover_real"] = failover_real(lab)
        results["failover_loadgen"] = failover_loadgen(lab, devices)
        return results
    finally:
        lab.down()


def holder(lab: Lab, row: dict[str, Any]) -> Server:
    return lab.server(row["server"])


def lan_paths(lab: Lab, seconds: float, pings: int) -> list[dict[str, Any]]:
    """iperf3 and ping to dev1: from the NMS at its LAN address, and from its node."""
    row = next(r for r in lab.status()["devices"] if r["name"] == "dev1" and r["vrf"] == VRF)
    node = holder(lab, row)
    rows = []
    for name, ns, address in (
        ("node -> device", node.ns, row["overlay"]),
        ("NMS -> router -> device", NMS, row["lan"]),
    ):
        common = {"port": IPERF_PORT, "bind": row["overlay"]}
        rows.append(
            {
                "path": name,
                "up_mbit": iperf(ns, row["netns"], address, seconds, reverse=False, **common),
                "down_mbit": iperf(ns, row["netns"], address, seconds, reverse=True, **common),
                "idle_rtt_ms": ping_rtt(ns, address, pings, 0.01),
                "sparse_rtt_ms": ping_rtt(ns, address, max(pings // 10, 5), 1.0),
            }
        )
    return rows


def prefixes(lab: Lab) -> dict[str, int]:
    """The prefixes the router has from each established neighbour."""
    data = json.loads(lab.frr.vtysh("show bgp ipv4 unicast summary json") or "{}")
    peers = data.get("peers") or data.get("ipv4Unicast", {}).get("peers", {})
    return {
        address: int(peer.get("pfxRcd", 0))
        for address, peer in peers.items()
        if peer.get("state") == "Established"
    }


def wait_prefixes(lab: Lab, check: Any, what: str, timeout: float) -> float:
    """Seconds until ``check(prefixes)`` holds (polled every 0.1 s)."""
    started = time.monotonic()
    seen: list[dict[str, int]] = [{}]

    def look() -> bool:
        seen[0] = prefixes(lab)
        return bool(check(seen[0]))

    try:
        deploy.wait_for(what, look, timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"{what} did not happen within {timeout} s: {seen[0]}") from None
    return time.monotonic() - started


def route_rate(lab: Lab, count: int) -> dict[str, Any]:
    """Kernel → BIRD → BGP → FRR: ``count`` routes added at once on node 2, then deleted."""
    node = Server(2)
    base = prefixes(lab).get(node.lan_ip, 0)
    lines = [
        f"route {{op}} {ipaddress.IPv4Address(ROUTE_BASE + n)}/32 dev ovl0 proto 250 scope link"
        for n in range(count)
    ]
    timings = {}
    for op, want in (("add", base + count), ("del", base)):
        batch = "\n".join(line.format(op=op) for line in lines) + "\n"
        started = time.monotonic()
        netns.run(node.ns, ["ip", "-batch", "-"], input=batch, check=True)
        written = time.monotonic() - started
        took = wait_prefixes(
            lab,
            lambda p, want=want: p.get(node.lan_ip) == want,
            f"FRR seeing {count} routes {op}",
            120,
        )
        timings[op] = {"kernel_s": round(written, 3), "router_s": round(written + took, 3)}
    return {
        "routes": count,
        "added_s": timings["add"]["router_s"],
        "deleted_s": timings["del"]["router_s"],
        "routes_per_s": round(count / timings["add"]["router_s"]),
        "kernel_write_s": timings["add"]["kernel_s"],
    }


PING_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def failover_real(lab: Lab) -> dict[str, Any]:
    """SIGKILL the node holding the real devices; per device, until the NMS's pings to its
    LAN address are answered again."""
    status = lab.status()["devices"]
    node = max(lab.servers(), key=lambda n: sum(r["server"] == n.name for r in status))
    rows = [r for r in status if r["server"] == node.name and r["vrf"] == VRF]
    pingers = {}
    for row in rows:
        log = lab.dir / f"ping-{row['name']}.log"
        pingers[row["name"]] = (
            netns.spawn(NMS, ["ping", "-D", "-n", "-i", "0.05", "-W", "1", row["lan"]], log),
            log,
        )
    time.sleep(1)
    killed = time.time()
    lab.signal(node, signal.SIGKILL)
    times = {}
    deadline = time.monotonic() + 60
    while len(times) < len(rows) and time.monotonic() < deadline:
        time.sleep(0.2)
        for name, (_, log) in pingers.items():
            if name in times:
                continue
            for line in log.read_text().splitlines():
                found = PING_LINE.match(line)
                if found and float(found.group(1)) > killed + 0.05:
                    times[name] = float(found.group(1)) - killed
                    break
    for process, _ in pingers.values():
        netns.stop(process)
    moved = {r["name"]: r for r in lab.status()["devices"] if r["vrf"] == VRF}
    same = all(moved[r["name"]]["lan"] == r["lan"] for r in rows)
    lab.start(node)  # as an operator would; the devices stay where they are
    values = sorted(times.values())
    return {
        "node": node.name,
        "devices": len(rows),
        "reached": len(times),
        "same_lan_addresses": same,
        "median_s": round(statistics.median(values), 2) if values else None,
        "last_s": round(values[-1], 2) if values else None,
    }


def failover_loadgen(lab: Lab, devices: int) -> dict[str, Any]:
    """The load generator's devices on node 1 (their first choice), node 1 SIGKILLed: until
    the router has all of their routes from node 2."""
    first, second = Server(1), Server(2)
    password = lab.dir / "tunnel-password"
    argv = [sys.executable, "-m", "lab.loadgen", "--ca", str(lab.dir / "pki" / "ca.pem")]
    argv += ["--url", first.url, "--url", second.url, "--password-file", str(password)]
    argv += ["--devices", str(devices), "--concurrency", "128"]
    netns.sysctl(NAT, "net.ipv4.ip_local_port_range", "1024 65535")
    with open(lab.dir / "loadgen.err", "w") as errors:
        loadgen = subprocess.Popen(
            netns.exec_argv(NAT, argv), cwd=REPO, stdout=subprocess.PIPE, stderr=errors, text=True
        )
    events = Events(loadgen)
    base = sum(prefixes(lab).values())  # the lab's own devices
    try:
        up = events.wait("up", 120 + devices / 20)
        learned = wait_prefixes(
            lab,
            lambda p: sum(p.values()) >= base + devices,
            f"the router learning {devices} routes",
            120 + devices / 50,
        )
        on_first = prefixes(lab).get(first.lan_ip, 0)  # a few may have landed on node 2
        lab.signal(first, signal.SIGKILL)
        moved = wait_prefixes(
            lab,
            lambda p: not p.get(first.lan_ip) and p.get(second.lan_ip, 0) >= base + devices,
            f"the router having all {devices} routes from {second.name}",
            120 + devices / 20,
        )
        back = events.wait("back", 120 + devices / 20)
        return {
            "devices": devices,
            "first_connect_s": up["seconds"],
            "router_had_all_s_after_up": round(learned, 2),
            "routes_on_killed_node": on_first,
            "router_all_on_survivor_s": round(moved, 2),
            "loadgen_back_s": back["seconds"],
            "same_addresses": back["same_addresses"],
        }
    finally:
        loadgen.terminate()
        loadgen.wait(timeout=30)
        lab.start(first)


def format_reach(r: dict[str, Any]) -> list[str]:
    lines = [f"reach: the management LAN through FRR ({r['real_devices']} lab devices, 2 nodes)"]
    lines.append(
        f"  {'path':<26} {'up Mbit/s':>10} {'down Mbit/s':>12} {'RTT ms':>8} {'RTT 1/s ms':>11}"
    )
    for row in r["paths"]:
        lines.append(
            f"  {row['path']:<26} {row['up_mbit']:>10} {row['down_mbit']:>12} "
            f"{row['idle_rtt_ms']:>8} {row['sparse_rtt_ms']:>11}"
        )
    rate = r["route_rate"]
    lines.append(
        f"  BIRD -> FRR: {rate['routes']} routes in {rate['added_s']} s "
        f"({rate['routes_per_s']}/s), withdrawn in {rate['deleted_s']} s"
    )
    real = r["failover_real"]
    lines.append(
        f"  SIGKILL {real['node']}: the NMS reached {real['reached']} of {real['devices']} "
        f"devices again (same LAN address: {real['same_lan_addresses']}), median "
        f"{real['median_s']} s, last {real['last_s']} s"
    )
    gen = r["failover_loadgen"]
    lines.append(
        f"  SIGKILL srv holding {gen['routes_on_killed_node']} routes of {gen['devices']} "
        f"load-generator devices: the router had all from srv2 after "
        f"{gen['router_all_on_survivor_s']} s "
        f"(devices back after {gen['loadgen_back_s']} s, same addresses: {gen['same_addresses']})"
    )
    return lines
