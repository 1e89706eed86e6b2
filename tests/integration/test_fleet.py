"""A fleet: server processes (nodes) in their own namespaces sharing one PostgreSQL store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lab import deploy, netns
from lab import postgres as pg
from lab.bench.measure import tree
from lab.bench.reconnect import Events
from lab.deploy import BIN
from tests.integration.conftest import PASSWORD, SERVER_IP, SRV, Overlay
from tests.integration.simulated import start_loadgen

pytestmark = pytest.mark.netns

NODE_B_IP = "198.18.0.2"
NODE = r"regexp_replace(node, '-w[0-9]+$', '')"  # a row's node, without its worker's -wN
GEN_IP = "198.18.0.99"


@dataclass
class Fleet:
    overlay: Overlay
    cluster: pg.Cluster
    database: str
    url: str
    ca: Path
    gen: str = ""
    controls: dict[str, Path] = field(default_factory=dict)
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    loadgens: list[subprocess.Popen[str]] = field(default_factory=list)

    def start_node(self, name: str, ns: str, ip: str, url: str) -> None:
        store = (
            f'[store]\nurl = "{url}"\npassword_file = "{self.cluster.password_file}"\n'
            f'[node]\nname = "{name}"\ntunnel_ttl = 6\n'
        )
        config = self.overlay.root / name / "server.toml"
        if not config.exists():
            config = deploy.server_config(
                self.overlay.root / name, self.ca.parent, PASSWORD, host=ip, extra=store
            )
        self.servers[name] = deploy.start_server(ns, config)
        self.controls[name] = config.parent / "state" / "control.sock"
        deploy.wait_for(
            f"{name} start",
            lambda: deploy.server_status(self.controls[name]),
            process=self.servers[name],
            log=config.parent / "server.log",
        )

    def status(self, name: str) -> dict:
        status = deploy.server_status(self.controls[name])
        assert status is not None, f"{name} does not answer"
        return dict(status)

    def loadgen(
        self, ip: str, devices: int, first: int = 0, tag: str = "", once: bool = False
    ) -> Events:
        """Simulated devices SIM-first… towards the node at ``ip``; their addresses go to
        loadgen-TAG.json at "up"."""
        process, events = start_loadgen(
            self.gen,
            f"wss://{ip}/tun",
            self.ca,
            self.overlay.root / "password",
            devices,
            self.overlay.root / f"loadgen-{tag}.json",
            first,
            once,
        )
        self.loadgens.append(process)
        return events

    def addresses(self, tag: str) -> dict[str, str]:
        return dict(json.loads((self.overlay.root / f"loadgen-{tag}.json").read_text()))

    def leases(self) -> dict[str, str]:
        """(device → address) as the store holds them."""
        rows = self.cluster.psql("SELECT device, host(address) FROM leases", self.database)
        return dict(line.split("|") for line in rows.splitlines() if line)

    def stop(self) -> None:
        for process in self.loadgens:
            process.terminate()
        for process in self.loadgens:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        for server in self.servers.values():
            netns.stop(server, timeout=10)


@pytest.fixture
def fleet(overlay: Overlay, postgres: pg.Cluster, postgres_url: str) -> Iterator[Fleet]:
    """Node a in the test's server namespace, node b in one of its own, one store."""
    ca = deploy.pki(overlay.root / "pki", ["overlay.test", SERVER_IP, NODE_B_IP])
    (overlay.root / "password").write_text(PASSWORD + "\n")
    database = urlsplit(postgres_url).path.lstrip("/")
    made = Fleet(overlay, postgres, database, postgres_url, ca)
    node_b = overlay.attach("nodeb", NODE_B_IP)
    made.gen = overlay.attach("gen", GEN_IP)
    netns.sysctl(made.gen, "net.ipv4.ip_local_port_range", "1024 65535")
    try:
        made.start_node("node-a", SRV, SERVER_IP, postgres_url)
        made.start_node("node-b", node_b, NODE_B_IP, postgres_url)
        yield made
    finally:
        made.stop()


def test_two_nodes_lease_2000_new_devices_at_once_without_a_collision(fleet: Fleet) -> None:
    """1,200 devices storm each node; 400 of them storm both at once (2,000 devices). Each
    takes its hello and leaves: a device on two nodes keeps one tunnel, not both."""
    a = fleet.loadgen(SERVER_IP, 1200, first=0, tag="a", once=True)
    b = fleet.loadgen(NODE_B_IP, 1200, first=800, tag="b", once=True)
    up_a, up_b = a.wait("up", timeout=300), b.wait("up", timeout=300)
    print("node a up", up_a, "node b up", up_b)
    leases = fleet.leases()
    assert len(leases) == 2000  # one lease per device (the primary key)
    assert len(set(leases.values())) == 2000  # no address twice (UNIQUE)
    got = fleet.addresses("a") | fleet.addresses("b")
    assert got == leases  # every hello announced the stored lease
    both = [f"SIM-{n:05d}" for n in range(800, 1200)]
    assert all(fleet.addresses("a")[d] == fleet.addresses("b")[d] for d in both)
    for node in ("node-a", "node-b"):
        status = fleet.status(node)
        print(node, "lease races", status["server"]["store"]["races"], status["refusals"])


def test_a_newer_tunnel_on_another_node_closes_the_old_one(fleet: Fleet) -> None:
    """One live tunnel per (device, VRF) across the fleet: the node holding the older
    tunnel closes it (4001) when the device connects to another node."""
    fleet.loadgen(SERVER_IP, 1, tag="a").wait("up", timeout=60)
    deploy.wait_for(
        "node a's tunnel row",
        lambda: fleet.cluster.psql(f"SELECT {NODE} FROM tunnels", fleet.database) == "node-a",
    )
    started = time.monotonic()
    fleet.loadgen(NODE_B_IP, 1, tag="b").wait("up", timeout=60)
    deploy.wait_for(
        "node a closing its older tunnel",
        lambda: fleet.status("node-a")["server"]["taken_over"] >= 1,
        timeout=10,
    )
    print(f"closed on node a {time.monotonic() - started:.2f} s after node b's hello")
    assert fleet.addresses("a") == fleet.addresses("b")  # the address moved with the device
    events = log_events(fleet.overlay.root / "node-a" / "server.log")
    (taken,) = [e for e in events if e["event"] == "tunnel taken over on another node"]
    assert (taken["device"], node_of(taken["by"]), node_of(taken["node"])) == (
        "SIM-00000",
        "node-b",
        "node-a",
    )


def test_the_fleet_rides_out_a_store_outage(fleet: Fleet) -> None:
    """Tunnels stay up, known devices come back from the node's memory, new ones wait
    with 503 and get in once the store returns; nothing lost, nothing twice."""
    first = fleet.loadgen(SERVER_IP, 50, tag="first")
    first.wait("up", timeout=60)
    fleet.cluster.stop()
    try:
        newcomers = fleet.loadgen(SERVER_IP, 10, first=1000, tag="new")
        deploy.wait_for(
            "new devices refused while the store is down",
            lambda: fleet.status("node-a")["refusals"].get("store-unavailable", 0) > 0,
            timeout=20,
        )
        status = fleet.status("node-a")
        assert status["server"]["store"]["up"] is False
        assert len(status["sessions"]) == 50  # the tunnels up stay up
        fleet.loadgens[0].terminate()  # the first devices drop and come back
        fleet.loadgens[0].wait(timeout=10)
        returning = fleet.loadgen(SERVER_IP, 50, tag="returning")
        returning.wait("up", timeout=60)  # admitted from the node's memory
        assert fleet.addresses("returning") == fleet.addresses("first")
    finally:
        fleet.cluster.start()
    newcomers.wait("up", timeout=60)
    leases = fleet.leases()
    assert len(leases) == 60 and len(set(leases.values())) == 60
    assert fleet.addresses("new").items() <= leases.items()
    deploy.wait_for(
        "the tunnels recorded again",
        lambda: fleet.cluster.psql("SELECT count(*) FROM tunnels", fleet.database) == "60",
        timeout=20,
    )
    said: dict[str, list[str]] = {}  # by the process that said it (each worker, with workers)
    for e in log_events(fleet.overlay.root / "node-a" / "server.log"):
        if e["event"].startswith("the store"):
            said.setdefault(e["node"], []).append(e["event"])
    assert said and all(
        events
        == [
            "the store is unavailable: known devices are admitted, new ones refused",
            "the store is back",
        ]
        for events in said.values()
    ), said


def node_of(name: str) -> str:
    """The node a worker (``node-a-w1``, with OVERLAY_TEST_WORKERS) belongs to."""
    return re.sub(r"-w[0-9]+$", "", name)


def log_events(path: Path) -> list[dict]:
    """The server's JSON log lines."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_device_removed_on_one_node_loses_its_tunnel_on_another(fleet: Fleet) -> None:
    """``overlay device`` works against the shared store from any node, and takes effect
    on the node that holds the device."""
    fleet.loadgen(SERVER_IP, 1, tag="a").wait("up", timeout=60)
    config_b = str(fleet.overlay.root / "node-b" / "server.toml")
    overlay = str(BIN / "overlay")
    listed = netns.run(SRV, [overlay, "device", "list", "--json", "--config", config_b])
    (row,) = json.loads(listed.stdout)
    assert row["leases"] == [f"default={fleet.addresses('a')['SIM-00000']}"]
    # node b's status shows where the fleet's tunnels are, from the store
    status = netns.run(SRV, [overlay, "status", "--json", "--config", config_b])
    (tunnel,) = json.loads(status.stdout)["fleet"]
    assert (tunnel["device"], tunnel["vrf"], node_of(tunnel["node"])) == (
        "SIM-00000",
        "default",
        "node-a",
    )
    text = netns.run(SRV, [overlay, "status", "SIM-00000", "--config", config_b]).stdout
    held = tunnel["node"]  # node-a, or the worker of node a that holds it
    assert f"fleet: 1 tunnels; {held} 1" in text and f"  default on {held} since " in text
    removed = fleet.overlay.run(SRV, overlay, "device", "remove", "SIM-00000", "--config", config_b)
    assert removed.returncode == 0, removed.stderr
    deploy.wait_for(
        "node a closing the removed device's tunnel",
        lambda: any(
            e["event"] == "device unbound on the fleet"
            for e in log_events(fleet.overlay.root / "node-a" / "server.log")
        ),
    )


def test_a_stopped_node_removes_its_tunnel_rows_and_a_dead_one_has_them_expire(
    fleet: Fleet,
) -> None:
    fleet.loadgen(SERVER_IP, 1, tag="a").wait("up", timeout=60)
    fleet.loadgen(NODE_B_IP, 1, first=1, tag="b").wait("up", timeout=60)

    def rows() -> str:
        return fleet.cluster.psql(f"SELECT DISTINCT {NODE} FROM tunnels ORDER BY 1", fleet.database)

    deploy.wait_for("both tunnels recorded", lambda: rows() == "node-a\nnode-b")
    netns.stop(fleet.servers.pop("node-a"), timeout=10)  # SIGTERM: a clean stop
    assert rows() == "node-b"
    for pid in tree(fleet.servers["node-b"].pid):  # dies (and its workers with it, if any):
        os.kill(pid, signal.SIGKILL)  # its rows stay until they expire (tunnel_ttl 6 s)
    fleet.servers.pop("node-b").wait(timeout=10)
    assert rows() == "node-b"
    fleet.start_node("node-a", SRV, SERVER_IP, fleet.url)  # any live node expires them
    deploy.wait_for("node b's rows expired", lambda: "node-b" not in rows(), timeout=20)
