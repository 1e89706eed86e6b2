"""Never lose a device: failover, no switch-back, takeover, DHCP, proxy, crashes, cuts, silence."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.deploy import wait_for
from tests.integration.conftest import PASSWORD, SRV, URL, Overlay

pytestmark = pytest.mark.netns


def current(device_socket: Path) -> dict:
    data = deploy.agent_status(device_socket)
    assert data is not None, "the device agent does not answer"
    return data["tunnels"][0]


def log_events(log: Path, event: str) -> list[dict]:
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                events.append(entry)
    return events


def test_failover_to_the_second_backup_and_no_switch_back(overlay: Overlay) -> None:
    overlay.start_server()
    primary_ns = overlay.attach("primary", "198.18.0.5")
    overlay.attach("backup1", "198.18.0.6")  # nothing listens there
    urls = ["wss://198.18.0.5/tun", "wss://198.18.0.6/tun", URL]
    device = overlay.add_device("dev1", urls=urls, server_name="overlay.test")
    up = overlay.start_device(device)
    assert up is not None and up["server"] == URL

    _, primary_control = overlay.start_extra_server(primary_ns, "primary")
    time.sleep(5)  # several backoff periods: a device that switched back would have done it
    assert current(device.socket)["server"] == URL
    assert current(device.socket)["state"] == "up"

    overlay.stop_server()  # the backup goes away (1001): retried at once, then the next in order
    moved = wait_for(
        "device on the primary",
        lambda: (t := current(device.socket))["state"] == "up" and t["server"] == urls[0] and t,
        timeout=20,
        log=device.log,
    )
    assert moved["failovers"] == 1
    lost = log_events(device.log, "tunnel lost")
    assert lost[-1]["reason"] == "server going away (1001)" and lost[-1]["then"] == "at once"
    assert any(s["device"] == "dev1" for s in deploy.server_status(primary_control)["sessions"])


def test_replaced_device_waits_the_longest_backoff(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1")
    overlay.start_device(device)
    result = overlay.python(
        device.ns,
        "tests.integration.rawclient",
        URL,
        str(overlay.ca_file),
        PASSWORD,
        "dev1",
    )
    assert result.returncode == 0, result.stderr
    lost = wait_for(
        "4001 in the device log",
        lambda: [e for e in log_events(device.log, "tunnel lost") if "4001" in e["reason"]],
        log=device.log,
    )
    assert lost[0]["reason"] == "replaced by a newer session of this device (4001)"
    assert lost[0]["then"] == "longest"
    backoffs = wait_for("backoff logged", lambda: log_events(device.log, "tunnel backoff"))
    assert backoffs[-1]["retry_in"] == 2.0  # max_delay of the test config


def test_dhcp_options_win_and_only_a_change_reconnects(overlay: Overlay) -> None:
    overlay.start_server()
    second_ns = overlay.attach("second", "198.18.0.7")
    lease = overlay.root / "dhcp.lease"
    write_lease(lease, networkd_lease("198.18.0.1", PASSWORD))
    device = overlay.add_device(
        "dev1",
        password="not-the-password",
        urls=["wss://198.18.0.99/tun"],
        server_name="overlay.test",
        extra=f'\n[dhcp]\nlease_file = "{lease}"\nformat = "networkd"\npoll_interval = 0.2\n',
    )
    up = overlay.start_device(device)
    assert up is not None and up["server"] == "wss://198.18.0.1/tun"

    write_lease(lease, networkd_lease("198.18.0.1", PASSWORD) + "# renewed, same values\n")
    time.sleep(1.5)
    assert len(log_events(device.log, "tunnel up")) == 1  # left alone

    overlay.start_extra_server(second_ns, "second")
    write_lease(lease, networkd_lease("198.18.0.7", PASSWORD))
    moved = wait_for(
        "device on the new DHCP server",
        lambda: (
            (t := current(device.socket))["server"] == "wss://198.18.0.7/tun"
            and t["state"] == "up"
            and t
        ),
        timeout=15,
        log=device.log,
    )
    assert moved["servers"] == ["wss://198.18.0.7/tun"]
    assert len(log_events(device.log, "new server or password from DHCP, reconnecting")) == 1
    assert len(log_events(device.log, "tunnel up")) == 2


def write_lease(path: Path, text: str) -> None:
    """Replace the lease file at once, as DHCP clients do (write, then rename)."""
    partial = path.with_suffix(".new")
    partial.write_text(text)
    partial.rename(path)


def networkd_lease(server: str, password: str) -> str:
    return (
        f"ADDRESS=198.18.0.11\nOPTION_253={server.encode().hex()}\n"
        f"OPTION_252={password.encode().hex()}\n"
    )


TINYPROXY = """\
Port 3128
Listen 198.19.200.1
Timeout 600
LogFile "{dir}/tinyproxy.log"
LogLevel Connect
PidFile "{dir}/tinyproxy.pid"
MaxClients 20
Allow 198.19.200.0/24
BasicAuth device {password}
ConnectPort 443
"""


def test_device_reaches_the_server_only_through_a_connect_proxy(overlay: Overlay) -> None:
    overlay.start_server()
    proxy_ns = overlay.attach("proxy", "198.18.0.50")
    device_ns = "ovlt-dev1"
    netns.create(device_ns)  # no route to 198.18.0.0/24: only the proxy gets through
    netns.veth(device_ns, "eth0", proxy_ns, "lan0")
    netns.address(device_ns, "eth0", "198.19.200.2/24")
    netns.address(proxy_ns, "lan0", "198.19.200.1/24")
    (overlay.root / "tinyproxy.conf").write_text(
        TINYPROXY.format(dir=overlay.root, password="proxy-pass")
    )
    overlay.processes.append(
        netns.spawn(
            proxy_ns,
            ["tinyproxy", "-d", "-c", str(overlay.root / "tinyproxy.conf")],
            overlay.root / "tinyproxy.out",
        )
    )
    config = deploy.appliance_config(
        overlay.root / "dev1",
        "dev1",
        [URL],
        overlay.ca_file,
        PASSWORD,
        extra='\n[proxy]\nurl = "http://198.19.200.1:3128"\nusername = "device"\n'
        'password = "proxy-pass"\n',
    )
    process = deploy.start_appliance(device_ns, config)
    overlay.processes.append(process)
    socket = config.parent / "state" / "dev1.sock"
    up = wait_for(
        "tunnel up through the proxy",
        deploy.tunnel_up(socket),
        timeout=20,
        log=config.parent / "appliance.log",
    )
    assert up["address"] == "169.254.1.1"
    assert "CONNECT" in (overlay.root / "tinyproxy.log").read_text()
    assert overlay.run(SRV, "ping", "-c", "1", "-W", "2", "169.254.1.1").returncode == 0
    session = overlay.server_status()["sessions"][0]
    assert session["peer"] == "198.18.0.50"  # the server sees the proxy, not the device


def test_server_killed_during_traffic_keeps_every_lease(overlay: Overlay) -> None:
    overlay.start_server()
    devices = [overlay.add_device(f"dev{n}") for n in (1, 2, 3)]
    addresses = {}
    for device in devices:
        up = overlay.start_device(device)
        assert up is not None
        addresses[device.name] = up["address"]
    floods = [
        overlay.spawn(SRV, ["ping", "-f", "-s", "1200", address], f"flood-{name}.log")
        for name, address in addresses.items()
    ]
    time.sleep(1)
    assert overlay.server is not None
    overlay.server.send_signal(signal.SIGKILL)
    overlay.server.wait()
    for flood in floods:
        netns.stop(flood)

    leases = overlay.server_config.parent / "state" / "leases.sqlite"  # type: ignore[union-attr]
    db = sqlite3.connect(leases)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert dict(db.execute("SELECT device, address FROM leases")) == addresses
    db.close()

    overlay.start_server()
    for device in devices:
        back = wait_for(
            f"{device.name} back", deploy.tunnel_up(device.socket), timeout=30, log=device.log
        )
        assert back["address"] == addresses[device.name]


def test_silent_device_is_dropped_by_the_server_and_comes_back(overlay: Overlay) -> None:
    overlay.start_server(ping_interval=1, keepalive_misses=3)
    device = overlay.add_device("dev1")
    up = overlay.start_device(device)
    assert up is not None and device.process is not None
    os.kill(device.process.pid, signal.SIGSTOP)  # the agent hangs: no pongs, no pings
    try:
        wait_for(
            "server frees the silent session",
            lambda: not overlay.server_status()["sessions"],
            timeout=10,
        )
        assert overlay.server_status()["leases"] == [
            {"device": "dev1", "vrf": "default", "address": up["address"], "lan_address": None}
        ]
    finally:
        os.kill(device.process.pid, signal.SIGCONT)
    back = wait_for(
        "device back",
        lambda: (
            (t := current(device.socket))["state"] == "up"
            and overlay.server_status()["sessions"]
            and t
        ),
        timeout=20,
        log=device.log,
    )
    assert back["address"] == up["address"]
    assert "device silent, closing its session" in overlay.server_log.read_text()


def test_tcp_stream_survives_server_restart_and_an_underlay_cut(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1")
    overlay.start_device(device)
    sink = overlay.spawn(
        SRV,
        [sys.executable, "-m", "tests.integration.peer", "sink", "169.254.0.1", "7100"],
        "sink.log",
    )
    wait_for("sink ready", lambda: "ready" in (overlay.root / "sink.log").read_text())
    size = 3_000_000
    sender = overlay.spawn(
        device.ns,
        [
            sys.executable,
            "-m",
            "tests.integration.peer",
            "stream",
            "169.254.0.1",
            "7100",
            str(size),
            "150000",
        ],
        "stream.log",
    )
    time.sleep(3)
    assert overlay.stop_server() == 0
    overlay.start_server()
    wait_for("device back", deploy.tunnel_up(device.socket), timeout=20, log=device.log)
    time.sleep(2)
    netns.link_state(SRV, "vdev1", up=False)  # the device's uplink is cut for 30 s
    time.sleep(30)
    netns.link_state(SRV, "vdev1", up=True)
    sender.wait(timeout=180)
    sink.wait(timeout=30)
    sent = (overlay.root / "stream.log").read_text().split()
    received = (overlay.root / "sink.log").read_text().split()
    assert sent[:2] == ["sent", str(size)], sent
    assert received[-4:] == ["received", str(size), "sha256", sent[-1]]
