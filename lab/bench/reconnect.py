"""Part ``reconnect``: a storm of simulated devices against one server, restarted twice.

With ``workers`` > 1 the server runs that many workers (``listen.workers``), on
the default SQLite store or, with ``postgres``, on a PostgreSQL store of the
bench's own; CPU and memory are those of the supervisor and its workers
together, and PostgreSQL's are given apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import deploy, netns
from lab import postgres as pg
from lab.bench.measure import (
    GEN,
    REPO,
    SERVER_IP,
    SRV,
    cpu_seconds,
    tree,
    tree_cpu_seconds,
    tree_rss_kib,
    two_namespaces,
)


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


def reconnect(work: Path, devices: int, workers: int = 1, postgres: bool = False) -> dict[str, Any]:
    store = None
    if postgres:  # in a directory the postgres user may enter
        store = pg.Cluster(Path(f"/tmp/ovl-bench-store-{os.getpid()}"))
        store.remove()
    try:
        return storm(work, devices, workers, store)
    finally:
        if store is not None:
            store.remove()


def storm(work: Path, devices: int, workers: int, store: pg.Cluster | None) -> dict[str, Any]:
    two_namespaces(work, GEN)
    # All devices share the generator's one address, unlike a real fleet: with
    # the default 28,000 ephemeral ports, a return while 10,000 old connections
    # linger made each connect() search long for a free port.
    netns.sysctl(GEN, "net.ipv4.ip_local_port_range", "1024 65535")
    password = os.urandom(12).hex()
    (work / "password").write_text(password)
    ca = deploy.pki(work / "pki", [SERVER_IP])
    extra = ""
    listen = f"workers = {workers}"
    if store is not None:
        store.start()
        store.create_database("overlay")
        extra = (
            f'[store]\nurl = "{store.url("overlay")}"\npassword_file = "{store.password_file}"\n'
        )
    config = deploy.server_config(
        work / "server", work / "pki", password, host=SERVER_IP, extra=extra, listen=listen
    )
    control = config.parent / "state" / "control.sock"

    def start_server() -> subprocess.Popen[bytes]:
        server = deploy.start_server(SRV, config)
        deploy.wait_for(
            "server start",
            lambda: deploy.server_status(control),
            process=server,
            log=config.parent / "server.log",
        )
        return server

    def store_cpu() -> float:
        return 0.0 if store is None else tree_cpu_seconds(store.pid())

    server = start_server()
    idle_rss = tree_rss_kib(server.pid)
    idle_cpu, idle_store_cpu = tree_cpu_seconds(server.pid), store_cpu()
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
        handshake_cpu = (tree_cpu_seconds(server.pid) - idle_cpu) / devices
        store_cpu_per_tunnel = (store_cpu() - idle_store_cpu) / devices
        loadgen_cpu = cpu_seconds(loadgen.pid) / devices
        time.sleep(2)
        loaded_rss = tree_rss_kib(server.pid)
        results: dict[str, Any] = {
            "devices": devices,
            "workers": workers,
            "store": "sqlite" if store is None else "postgresql",
            "first_connect_s": up["seconds"],
            "tunnels_per_s": round(devices / up["seconds"], 1),
            "server_cpu_ms_per_tunnel": round(handshake_cpu * 1000, 3),
            "server_capacity_tunnels_per_s": round(1 / handshake_cpu) if handshake_cpu else None,
            "store_cpu_ms_per_tunnel": round(store_cpu_per_tunnel * 1000, 3) if store else None,
            "loadgen_cpu_ms_per_tunnel": round(loadgen_cpu * 1000, 3),
            "server_rss_idle_kib": idle_rss,
            "server_rss_loaded_kib": loaded_rss,
            "rss_per_tunnel_kib": round((loaded_rss - idle_rss) / devices, 1),
        }
        for how, sig in (("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL)):
            signalled = time.monotonic()
            # SIGKILL: every worker as well (a crash), not only the supervisor, which
            # would have them close their sessions
            for pid in tree(server.pid) if sig == signal.SIGKILL else [server.pid]:
                os.kill(pid, sig)
            server.wait(timeout=60)
            results[f"server_gone_after_{how}_s"] = round(time.monotonic() - signalled, 2)
            started = time.monotonic()
            server = start_server()
            results[f"server_up_after_{how}_s"] = round(time.monotonic() - started, 2)
            started_cpu = tree_cpu_seconds(server.pid)
            back = events.wait("back", timeout=120 + devices / 20)
            returning_cpu = (tree_cpu_seconds(server.pid) - started_cpu) / devices
            results[f"server_cpu_ms_per_return_after_{how}"] = round(returning_cpu * 1000, 3)
            results[f"back_after_{how}_s"] = back["seconds"]
            results[f"same_addresses_after_{how}"] = back["same_addresses"]
            results[f"attempts_after_{how}"] = back["attempts"]
        return results
    finally:
        loadgen.terminate()
        loadgen.wait(timeout=30)
        netns.stop(server)
