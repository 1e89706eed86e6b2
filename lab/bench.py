"""``scripts/bench``: measure the overlay in network namespaces of its own (``ovlb-*``).

    scripts/bench [--part reconnect] [--devices N] [--quick] [--json FILE]

Part ``reconnect`` (the resilience load check): N simulated devices
(``lab.loadgen``, protocol v1 without a TUN each) connect to one server; then
the server is restarted twice, gracefully (SIGTERM: devices hear 1001 and come
back at once) and by SIGKILL (no close frame: devices back off with jitter),
and the time until every device is back with its old address is measured. It
also reads the server's RSS per idle tunnel and the new tunnels per second.

Numbers are printed as a table and written as JSON; nothing is asserted. Only
addresses inside the bench's own namespaces are used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import deploy, netns

PREFIX = "ovlb-"
SRV, GEN = "ovlb-srv", "ovlb-gen"
SERVER_IP = "198.18.0.1"
REPO = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Events:
    """Reads the loadgen's JSON lines as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"loadgen ended before {event!r}")
            data: dict[str, Any] = json.loads(line)
            if data["event"] == event:
                return data
        raise TimeoutError(f"no {event!r} from loadgen within {timeout} s")


def reconnect(work: Path, devices: int) -> dict[str, Any]:
    netns.create(SRV)
    netns.create(GEN)
    netns.veth(SRV, "eth0", GEN, "eth0")
    netns.address(SRV, "eth0", f"{SERVER_IP}/24")
    netns.address(GEN, "eth0", "198.18.0.2/24")
    password = os.urandom(12).hex()
    (work / "password").write_text(password)
    ca = deploy.pki(work / "pki", [SERVER_IP])
    config = deploy.server_config(work / "server", work / "pki", password, host=SERVER_IP)
    control = config.parent / "state" / "control.sock"

    def start_server() -> subprocess.Popen[bytes]:
        server = deploy.start_server(SRV, config)
        deploy.wait_for(
            "server start",
            lambda: deploy.status(control),
            process=server,
            log=config.parent / "server.log",
        )
        return server

    server = start_server()
    idle_rss = rss_kib(server.pid)
    argv = [
        sys.executable,
        "-m",
        "lab.loadgen",
        "--url",
        f"wss://{SERVER_IP}/tun",
        "--ca",
        str(ca),
        "--password-file",
        str(work / "password"),
        "--devices",
        str(devices),
    ]
    with open(work / "loadgen.err", "w") as errors:
        loadgen = subprocess.Popen(
            netns.exec_argv(GEN, argv), cwd=REPO, stdout=subprocess.PIPE, stderr=errors, text=True
        )
    events = Events(loadgen)
    try:
        up = events.wait("up", timeout=120 + devices / 20)
        time.sleep(2)
        loaded_rss = rss_kib(server.pid)
        results: dict[str, Any] = {
            "devices": devices,
            "first_connect_s": up["seconds"],
            "tunnels_per_s": round(devices / up["seconds"], 1),
            "server_rss_idle_kib": idle_rss,
            "server_rss_loaded_kib": loaded_rss,
            "rss_per_tunnel_kib": round((loaded_rss - idle_rss) / devices, 1),
        }
        for how, sig in (("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL)):
            server.send_signal(sig)
            server.wait(timeout=60)
            server = start_server()
            back = events.wait("back", timeout=120 + devices / 20)
            results[f"back_after_{how}_s"] = back["seconds"]
            results[f"same_addresses_after_{how}"] = back["same_addresses"]
            results[f"attempts_after_{how}"] = back["attempts"]
        return results
    finally:
        loadgen.terminate()
        loadgen.wait(timeout=30)
        netns.stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", choices=["reconnect"], action="append")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run that keeps the script working (CI): 50 devices",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    devices = 50 if args.quick else args.devices
    parts = args.part or ["reconnect"]
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
            if "reconnect" in parts:
                results["reconnect"] = reconnect(Path(tmp), devices)
        finally:
            for ns in netns.names(PREFIX):
                netns.remove(ns)
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['date']}  {results['machine']}{'  (quick)' if results['quick'] else ''}"]
    if "reconnect" in results:
        r = results["reconnect"]
        lines += [
            f"reconnect storm, {r['devices']} simulated devices",
            f"  first connect of all          {r['first_connect_s']:>8.2f} s "
            f"({r['tunnels_per_s']} tunnels/s)",
            f"  server RSS per idle tunnel    {r['rss_per_tunnel_kib']:>8.1f} KiB "
            f"({r['server_rss_idle_kib']} KiB idle, {r['server_rss_loaded_kib']} KiB loaded)",
            f"  all back after SIGTERM        {r['back_after_sigterm_s']:>8.2f} s "
            f"(same addresses: {r['same_addresses_after_sigterm']})",
            f"  all back after SIGKILL        {r['back_after_sigkill_s']:>8.2f} s "
            f"(same addresses: {r['same_addresses_after_sigkill']})",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
