"""The tunnel end to end: two devices, ping, UDP and TCP both ways, tcpdump, isolation, spoofing."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from lab import deploy, netns
from lab.deploy import BIN, wait_for
from tests.integration.conftest import SRV, Overlay, make_overlay

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, Path]) -> Iterator[Overlay]:
    """A server with two devices whose tunnels are up, shared by this module's tests:
    dev1 with segmentation offload, dev2 without (as an older device), so that the
    exchanges below cross both kinds of session."""
    for overlay in make_overlay(tmp_path_factory.mktemp("tunnel"), pki):
        overlay.start_server()
        overlay.start_device(overlay.add_device("dev1"))
        overlay.start_device(overlay.add_device("dev2", extra="[tun]\noffload = false\n"))
        yield overlay


def address_of(overlay: Overlay, name: str) -> str:
    row = overlay.server_status()["sessions"]
    return next(s["address"] for s in row if s["device"] == name)


def drops(overlay: Overlay, name: str) -> dict[str, int]:
    return next(s["drops"] for s in overlay.server_status()["sessions"] if s["device"] == name)


def test_each_device_gets_its_own_address(running: Overlay) -> None:
    sessions = running.server_status()["sessions"]
    assert {(s["device"], s["address"]) for s in sessions} == {
        ("dev1", "169.254.1.1"),
        ("dev2", "169.254.1.2"),
    }
    assert all(s["peer"].startswith("198.18.0.") for s in sessions)


def test_offload_is_granted_to_the_devices_that_ask(running: Overlay) -> None:
    sessions = running.server_status()["sessions"]
    assert {s["device"]: s["offload"] for s in sessions} == {"dev1": True, "dev2": False}
    for name, offload in (("dev1", True), ("dev2", False)):
        tunnel = deploy.agent_status(running.devices[name].socket)["tunnels"][0]  # appliance status
        assert tunnel["offload"] is offload


def test_device_tun_has_the_short_queue(running: Overlay) -> None:
    """The device's TUN holds 64 packets (tun.queue_length), not the kernel's 500."""
    with IPRoute(netns="ovlt-dev1") as ipr:
        (link,) = ipr.get_links(ifname="ovl0")
    assert (link.get_attr("IFLA_MTU"), link.get_attr("IFLA_TXQLEN")) == (1400, 64)


def test_ping_both_ways(running: Overlay) -> None:
    up = running.run("ovlt-dev1", "ping", "-c", "3", "-i", "0.2", "-W", "2", "169.254.0.1")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "3 received" in up.stdout
    down = running.run(SRV, "ping", "-c", "3", "-i", "0.2", "-W", "2", "169.254.1.2")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "3 received" in down.stdout


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_exchange_from_device_to_server(running: Overlay, kind: str) -> None:
    server = running.spawn(
        SRV,
        [sys.executable, "-m", "tests.integration.peer", "serve", kind, "169.254.0.1", "7001"],
        f"echo-srv-{kind}.log",
    )
    wait_ready(running.root / f"echo-srv-{kind}.log")
    result = running.python(
        "ovlt-dev1",
        "tests.integration.peer",
        "send",
        kind,
        "169.254.0.1",
        "7001",
        "3000000" if kind == "tcp" else "20000",
    )
    netns.stop(server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match" in result.stdout


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_exchange_from_server_to_device(running: Overlay, kind: str) -> None:
    address = address_of(running, "dev2")
    server = running.spawn(
        "ovlt-dev2",
        [sys.executable, "-m", "tests.integration.peer", "serve", kind, address, "7002"],
        f"echo-dev-{kind}.log",
    )
    wait_ready(running.root / f"echo-dev-{kind}.log")
    result = running.python(
        SRV,
        "tests.integration.peer",
        "send",
        kind,
        address,
        "7002",
        "3000000" if kind == "tcp" else "20000",
    )
    netns.stop(server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match" in result.stdout


def test_tcpdump_on_the_server_tun_sees_the_device_address(running: Overlay) -> None:
    pcap = running.root / "ovl0.pcap"
    tun = running.server_status()["server"]["tun"]  # "ovl0w1,ovl0w2" with workers: any
    interface = "any" if "," in tun else tun
    capture = running.spawn(
        SRV,
        ["tcpdump", "-i", interface, "-U", "--immediate-mode", "-n", "-w", str(pcap), "icmp"],
        "tcpdump.log",
    )
    wait_for("tcpdump start", lambda: "listening on" in (running.root / "tcpdump.log").read_text())
    running.run("ovlt-dev1", "ping", "-c", "2", "-i", "0.2", "169.254.0.1")
    time.sleep(0.3)
    netns.stop(capture)
    read = running.run(SRV, "tcpdump", "-n", "-r", str(pcap))
    assert "169.254.1.1 > 169.254.0.1: ICMP echo request" in read.stdout
    assert "169.254.0.1 > 169.254.1.1: ICMP echo reply" in read.stdout


def test_devices_cannot_reach_each_other(running: Overlay) -> None:
    before = drops(running, "dev2").get("policy", 0)
    result = running.run("ovlt-dev2", "ping", "-c", "2", "-i", "0.2", "-W", "1", "169.254.1.1")
    assert result.returncode != 0
    assert "0 received" in result.stdout
    assert drops(running, "dev2").get("policy", 0) >= before + 2


def test_spoofed_source_is_dropped_and_counted(running: Overlay) -> None:
    with IPRoute(netns="ovlt-dev1") as ipr:
        index = ipr.link_lookup(ifname="ovl0")[0]
        ipr.addr("add", index=index, address="169.254.1.99", prefixlen=32)
    try:
        before = drops(running, "dev1").get("spoofed", 0)
        result = running.run(
            "ovlt-dev1",
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "169.254.1.99",
            "169.254.0.1",
        )
        assert "0 received" in result.stdout
        assert drops(running, "dev1").get("spoofed", 0) >= before + 3
    finally:
        with IPRoute(netns="ovlt-dev1") as ipr:
            ipr.addr("del", index=index, address="169.254.1.99", prefixlen=32)


def test_status_commands_show_the_tunnels(running: Overlay) -> None:
    server = running.run(
        SRV, str(BIN / "overlay"), "status", "--config", str(running.server_config)
    )
    assert server.returncode == 0, server.stderr
    assert "dev1" in server.stdout and "169.254.1.2" in server.stdout
    device = running.devices["dev1"]
    agent = running.run(device.ns, str(BIN / "appliance"), "status", "--config", str(device.config))
    assert agent.returncode == 0, agent.stderr
    assert "up" in agent.stdout and "169.254.1.1" in agent.stdout


def wait_ready(log: Path) -> None:
    wait_for("echo peer ready", lambda: log.exists() and "ready" in log.read_text(), timeout=10)
