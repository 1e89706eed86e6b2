"""A server of two workers (``listen.workers = 2``): one port, one store (the default SQLite
files, or PostgreSQL), a /32 per tunnel through the TUN of the worker that holds it, and one
control socket for all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import deploy, netns
from lab import postgres as pg
from lab.bench.reconnect import Events
from lab.deploy import BIN
from overlay import pcap
from tests.integration.conftest import PASSWORD, SRV, TEST_RULES, URL, Overlay
from tests.integration.simulated import start_loadgen

pytestmark = pytest.mark.netns

GEN_IP = "198.18.0.99"


@pytest.fixture(params=["sqlite", "postgresql"])
def served(
    overlay: Overlay, postgres: pg.Cluster, request: pytest.FixtureRequest
) -> Iterator[Overlay]:
    """The test's server with two workers sharing its state directory's SQLite files, or a
    database of its own. (The session's cluster is asked for by both: asked for by the
    one alone, through getfixturevalue, it was gone when a later test wanted it.)"""
    store = '[node]\nname = "srv"\n'
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        store += f'[store]\nurl = "{url}"\npassword_file = "{postgres.password_file}"\n'

    overlay.server_config = deploy.server_config(
        overlay.root / "server",
        overlay.pki_dir,
        PASSWORD,
        listen="workers = 2",
        extra=TEST_RULES + store,
    )
    (overlay.root / "password").write_text(PASSWORD + "\n")
    overlay.start_server()
    yield overlay


def simulate(overlay: Overlay, devices: int) -> Events:
    """``devices`` simulated devices from a namespace of their own, up when this returns."""
    gen = overlay.attach("gen", GEN_IP)
    process, events = start_loadgen(
        gen, URL, overlay.ca_file, overlay.root / "password", devices, overlay.root / "sims.json"
    )
    overlay.processes.append(process)  # type: ignore[arg-type]
    events.wait("up", timeout=120)
    return events


def held(overlay: Overlay) -> dict[str, str]:
    """(device → address) of the tunnels up, as ``overlay status`` shows them."""
    return {s["device"]: s["address"] for s in overlay.server_status()["sessions"]}


def test_two_workers_serve_one_port_one_store_and_route_each_tunnel_to_its_worker(
    served: Overlay, tmp_path: Path
) -> None:
    overlay = served
    assert overlay.server_config is not None
    device = overlay.add_device("dev1")
    overlay.start_device(device)
    simulate(overlay, 40)
    status = overlay.server_status()
    workers = status["workers"]
    print("sessions per worker", [(w["number"], w["sessions"]) for w in workers])
    assert [w["up"] for w in workers] == [True, True]
    assert all(w["sessions"] > 0 for w in workers)  # the kernel spread the connections
    assert sum(w["sessions"] for w in workers) == len(status["sessions"]) == 41
    assert status["server"]["tun"] == "ovl0w1,ovl0w2"
    assert status["server"]["routes"]["installed"] == 41
    sims = json.loads((overlay.root / "sims.json").read_text())
    leases = {lease["device"]: lease["address"] for lease in status["leases"]}
    assert {d: leases[d] for d in sims} == sims  # every hello announced the stored lease
    assert len(set(leases.values())) == len(leases) == 41

    shown = subprocess.run(
        [str(BIN / "overlay"), "status", "--config", str(overlay.server_config)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert f"workers: 1 pid {workers[0]['pid']} {workers[0]['sessions']} tunnels, 2 pid" in shown
    # each session row says whose TUN carries it
    dev1 = next(s for s in status["sessions"] if s["device"] == "dev1")
    row = next(line for line in shown.splitlines() if line.startswith("dev1 "))
    assert row.endswith(f"  w{dev1['worker']}")

    # the management side reaches the device through its worker's TUN, and back
    address = held(overlay)["dev1"]
    ping = netns.run(SRV, ["ping", "-c", "3", "-i", "0.2", "-W", "2", address])
    assert ping.returncode == 0, ping.stdout

    # one capture for all workers: what dev1's worker forwards, whole records
    capture_file = tmp_path / "dev1.pcap"
    capture = netns.spawn(
        SRV,
        [str(BIN / "overlay"), "capture", "--config", str(overlay.server_config), "dev1",
         "-w", str(capture_file), "-c", "4"],
        tmp_path / "capture.log",
    )  # fmt: skip
    overlay.processes.append(capture)
    deploy.wait_for(
        "the capture's pcap header",
        lambda: capture_file.exists() and capture_file.stat().st_size >= pcap.FILE_HEADER_BYTES,
        process=capture,
        log=tmp_path / "capture.log",
    )
    netns.run(SRV, ["ping", "-c", "2", "-i", "0.2", address])
    capture.wait(timeout=20)
    packets = pcap.read(capture_file.read_bytes())
    assert len(packets) == 4 and all(packet[9] == 1 for _, packet in packets)  # ICMP

    # a rule changed through the supervisor is changed in every worker
    added = subprocess.run(
        [str(BIN / "overlay"), "rule", "add", "--direction", "from-device", "--ports", "7300",
         "--protocol", "udp", "--config", str(overlay.server_config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    print(added.stdout)
    state = overlay.server_config.parent / "state"
    for number in (1, 2):
        part = deploy.server_status(state / f"worker-{number}.sock")
        assert part is not None and part["firewall"]["rules"] == status["firewall"]["rules"] + 1

    # a newer tunnel of dev1 on another worker, as the relay tells it: dev1's closes (4001)
    relay = state / "relay.sock"
    assert relay.stat().st_mode & 0o777 == 0o600  # a line there closes a tunnel
    vrf = next(s["vrf"] for s in overlay.server_status()["sessions"] if s["device"] == "dev1")
    newer = ["tunnel", "dev1", vrf, "srv-w9", time.time() + 60]
    with socket.socket(socket.AF_UNIX) as told:
        told.connect(str(relay))
        told.sendall(json.dumps(newer).encode() + b"\n")
        deploy.wait_for("dev1 closed for the newer", lambda: "dev1" not in held(overlay))
    assert "replaced by a newer session" in device.log.read_text()

    # SIGHUP reaches every worker: each reloads the certificate
    assert overlay.server is not None
    overlay.server.send_signal(signal.SIGHUP)

    def reloaded() -> set[str]:
        lines = overlay.server_log.read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]  # whole lines
        return {e["node"] for e in entries if e["event"] == "certificate reloaded"}

    deploy.wait_for("both workers' reloads", lambda: reloaded() == {"srv-w1", "srv-w2"})

    # SIGTERM stops every worker and takes their TUNs away
    pids = [w["pid"] for w in workers]
    assert overlay.stop_server() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its supervisor"
    links = netns.run(SRV, ["ip", "-o", "link", "show"]).stdout
    assert "ovl0w" not in links


def test_a_worker_that_dies_is_started_again_and_its_devices_return_with_their_addresses(
    served: Overlay,
) -> None:
    overlay = served
    assert overlay.server_config is not None
    simulate(overlay, 30)
    before = held(overlay)
    status = overlay.server_status()
    victim, other = status["workers"]
    handshakes = status["server"]["handshakes"]
    other_socket = overlay.server_config.parent / "state" / "worker-2.sock"

    def sessions_of_other() -> set[str]:
        status = deploy.server_status(other_socket)
        assert status is not None, "worker 2 does not answer"
        return {s["session"] for s in status["sessions"]}

    kept = sessions_of_other()
    lost = victim["sessions"]
    os.kill(victim["pid"], signal.SIGKILL)

    def back() -> bool:
        status = overlay.server_status()
        worker = status["workers"][0]
        return worker["up"] and worker["restarts"] == 1 and held(overlay) == before

    deploy.wait_for("the worker and its devices back", back, timeout=60, log=overlay.server_log)
    status = overlay.server_status()
    assert status["workers"][0]["pid"] != victim["pid"]
    # the other worker went on: same process, and its tunnels never dropped
    assert (status["workers"][1]["pid"], status["workers"][1]["restarts"]) == (other["pid"], 0)
    assert kept <= sessions_of_other()
    # no counter went back with the dead worker: its handshakes still count, and its
    # devices' new ones add to them
    assert status["server"]["handshakes"] >= handshakes + lost
    print(f"{lost} devices of the killed worker back with their addresses")
    log = overlay.server_log.read_text()
    assert "worker died; starting it again" in log
