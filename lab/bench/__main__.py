"""``python -m lab.bench`` (``scripts/bench``): run the parts asked for, print and save
the table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import netns
from lab.bench import __doc__ as DESCRIPTION
from lab.bench.agent import agent, format_agent
from lab.bench.fairness import fairness, format_fairness
from lab.bench.measure import PREFIX
from lab.bench.paths import PATHS, paths
from lab.bench.reach import format_reach, reach
from lab.bench.reconnect import reconnect


def codel_pair(text: str) -> tuple[float, float]:
    """``"0.5,10"`` (milliseconds) as seconds."""
    try:
        target, interval = (float(x) / 1000 for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not TARGET,INTERVAL in ms (e.g. 0.5,10)"
        ) from None
    return target, interval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--part",
        choices=["paths", "reconnect", "agent", "reach", "fairness"],
        action="append",
    )
    parser.add_argument(
        "--path",
        choices=PATHS,
        action="append",
        help="measure only this path of part paths (repeat for more; default: all three)",
    )
    parser.add_argument(
        "--mtu",
        type=int,
        help="part paths: also measure the overlay with this MTU (its default is 1400)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="part paths: also profile the overlay's server and device with py-spy "
        "during iperf3 each way, into DIR",
    )
    parser.add_argument(
        "--codel",
        type=codel_pair,
        metavar="TARGET,INTERVAL",
        help="part paths: also measure the overlay with this CoDel target and interval "
        "in ms at both ends (its default is 5,100; 0.5,10 suits a LAN)",
    )
    parser.add_argument(
        "--chart", type=Path, metavar="PNG", help="part paths: also draw the results here"
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="part reconnect: the server's listen.workers",
    )
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="part reconnect: the server's store (postgresql: a cluster of the bench's own)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run that keeps the script working (CI): 50 devices",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    devices = 50 if args.quick else args.devices
    parts = args.part or ["paths", "reconnect", "agent", "reach", "fairness"]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "quick": args.quick,
    }
    for ns in netns.names(PREFIX):
        netns.remove(ns)
    with tempfile.TemporaryDirectory(prefix="ovl-bench-") as tmp:
        try:
            if "paths" in parts:
                seconds, pings = (2, 20) if args.quick else (10, 100)
                results["paths"] = paths(
                    Path(tmp) / "paths",
                    seconds,
                    pings,
                    args.path or list(PATHS),
                    args.mtu,
                    args.profile,
                    args.codel,
                )
                for ns in netns.names(PREFIX):
                    netns.remove(ns)
            if "reconnect" in parts:
                results["reconnect"] = reconnect(
                    Path(tmp) / "reconnect", devices, args.workers, args.store == "postgresql"
                )
                for ns in netns.names(PREFIX):
                    netns.remove(ns)
            if "agent" in parts:
                results["agent"] = agent(Path(tmp) / "agent", 5 if args.quick else 30)
            if "fairness" in parts:
                results["fairness"] = fairness(
                    Path(f"/tmp/ovl-bench-fairness-{os.getpid()}"), 10 if args.quick else 50
                )
            if "reach" in parts:  # the lab, in a directory PostgreSQL and FRR may enter
                results["reach"] = reach(
                    Path(f"/tmp/ovl-bench-reach-{os.getpid()}"),
                    devices,
                    2 if args.quick else 10,
                    2 if args.quick else 10,
                    20 if args.quick else 100,
                )
        finally:
            for ns in netns.names(PREFIX):
                netns.remove(ns)
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.chart and "paths" in results:
        from lab.chart import draw

        draw(results, args.chart)
    return 0


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['date']}  {results['machine']}{'  (quick)' if results['quick'] else ''}"]
    if "paths" in results:
        lines.append(
            f"{'path':<16} {'up Mbit/s':>10} {'down Mbit/s':>12} {'idle RTT ms':>12} "
            f"{'at 1/s ms':>10} {'RTT under load ms':>18} {'server CPU s/Gbit':>18}"
        )
        for row in results["paths"]:
            cpu = row["server_cpu_s_per_gbit"]
            lines.append(
                f"{row['path']:<16} {row['up_mbit']:>10} {row['down_mbit']:>12} "
                f"{row['idle_rtt_ms']:>12} {row['sparse_rtt_ms']:>10} {row['loaded_rtt_ms']:>18} "
                f"{'-' if cpu is None else cpu:>18}"
            )
    if "reconnect" in results:
        r = results["reconnect"]
        workers = r.get("workers", 1)
        store = r.get("store_cpu_ms_per_tunnel")
        lines += [
            f"reconnect storm, {r['devices']} simulated devices"
            + (f", {workers} server workers" if workers > 1 else "")
            + (" on PostgreSQL" if r.get("store") == "postgresql" else ""),
            f"  first connect of all          {r['first_connect_s']:>8.2f} s "
            f"({r['tunnels_per_s']} tunnels/s)",
            f"  server CPU per new tunnel     {r['server_cpu_ms_per_tunnel']:>8.3f} ms "
            f"(a core's worth: {r['server_capacity_tunnels_per_s']} tunnels/s)"
            + (f"; the store {store:.3f} ms more" if store is not None else ""),
            f"  load generator CPU per tunnel {r['loadgen_cpu_ms_per_tunnel']:>8.3f} ms "
            "(its own TLS and WebSocket client, on the same 2 cores; its start-up included)",
            f"  server RSS per idle tunnel    {r['rss_per_tunnel_kib']:>8.1f} KiB "
            f"({r['server_rss_idle_kib']} KiB idle, {r['server_rss_loaded_kib']} KiB loaded)",
            f"  all back after SIGTERM        {r['back_after_sigterm_s']:>8.2f} s "
            f"(same addresses: {r['same_addresses_after_sigterm']}; the server took "
            f"{r['server_gone_after_sigterm_s']} s to stop, {r['server_up_after_sigterm_s']} s "
            "to answer again)",
            f"  all back after SIGKILL        {r['back_after_sigkill_s']:>8.2f} s "
            f"(same addresses: {r['same_addresses_after_sigkill']}; the server took "
            f"{r['server_up_after_sigkill_s']} s to answer again)",
            f"  server CPU per returning tunnel "
            f"{r['server_cpu_ms_per_return_after_sigkill']:>6.3f} ms "
            "(after SIGKILL: the enrolment and the lease exist)",
        ]
    if "agent" in results:
        lines += format_agent(results["agent"])
    if "reach" in results:
        lines += format_reach(results["reach"])
    if "fairness" in results:
        lines += format_fairness(results["fairness"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
