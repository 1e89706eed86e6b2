"""What an operator sees: the admin API (token), metrics that move, the OpenAPI description."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import deploy, netns, services
from lab.deploy import BIN
from tests.integration.conftest import PASSWORD, REPO, SRV, Overlay

pytestmark = pytest.mark.netns

ADMIN = "http://127.0.0.1:9180"


def get(path: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    headers = ["-H", f"Authorization: Bearer {token}"] if token else []
    result = netns.run(
        SRV, ["curl", "-s", "-X", method, "-w", "\n%{http_code}", *headers, ADMIN + path]
    )
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def test_admin_api_and_metrics(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1")
    overlay.start_device(device)
    assert overlay.server_config is not None
    token_file = overlay.server_config.parent / "state" / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()

    # the token's refusals and the metrics' format: tests/middle/test_admin.py
    code, body = get("/api/v1/status", token)
    assert code == 200
    status = json.loads(body)
    assert [s["device"] for s in status["sessions"]] == ["dev1"]

    code, before = get("/metrics")  # Prometheus scrapes without the token by default
    assert code == 200
    assert metric(before, "overlay_sessions") == 1
    assert metric(before, "overlay_leases") == 1
    assert netns.run(device.ns, ["ping", "-c", "5", "-i", "0.1", "169.254.0.1"]).returncode == 0
    after = get("/metrics")[1]
    rx = 'overlay_tunnel_packets_total{direction="rx"}'
    assert metric(after, rx) >= metric(before, rx) + 5  # the counters move with the traffic
    for name in (
        "overlay_pending_connections",
        "overlay_pool_addresses",
        "overlay_handshakes_total",
        "overlay_enrolled_devices",
    ):
        metric(after, name)

    spec = json.loads(get("/openapi.json")[1])
    assert set(spec["paths"]) >= {"/api/v1/status", "/metrics"}

    code, body = get("/api/v1/devices/dev1/unbind", token, method="POST")
    assert code == 200 and json.loads(body)["closed"] == 1
    assert metric(get("/metrics")[1], "overlay_leases") == 0


def test_status_of_one_device(overlay: Overlay) -> None:
    overlay.start_server()
    for name in ("dev1", "dev2"):
        overlay.start_device(overlay.add_device(name))
    overlay.run("ovlt-dev2", "ping", "-c", "2", "-W", "1", "169.254.1.1")  # isolation drops
    assert overlay.server_config is not None
    overlay_bin = str(BIN / "overlay")
    one = netns.run(SRV, [overlay_bin, "status", "--config", str(overlay.server_config), "dev2"])
    assert one.returncode == 0, one.stderr
    assert "dev2" in one.stdout and "dev1" not in one.stdout.replace("dev1/", "")
    assert "leases: dev2/default=169.254.1.2" in one.stdout
    assert "policy=2" in one.stdout
    data = json.loads(
        netns.run(
            SRV, [overlay_bin, "status", "--config", str(overlay.server_config), "--json", "dev2"]
        ).stdout
    )
    assert [s["device"] for s in data["sessions"]] == ["dev2"]
    missing = netns.run(SRV, [overlay_bin, "status", "--config", str(overlay.server_config), "x"])
    assert missing.returncode == 1
    assert missing.stderr == "error: no session and no lease for device 'x'\n"


def test_tls_key_log_lets_tshark_read_the_tunnel(overlay: Overlay, tmp_path: Path) -> None:
    keys = tmp_path / "tls-keys.log"
    overlay.server_config = deploy.server_config(overlay.root / "server", overlay.pki_dir, PASSWORD)
    server = deploy.start_server(
        SRV, overlay.server_config, env=os.environ | {"SSLKEYLOGFILE": str(keys)}
    )
    overlay.processes.append(server)
    deploy.wait_for("server start", lambda: deploy.server_status(overlay.control), process=server)
    assert "TLS KEYS ARE BEING WRITTEN" in overlay.server_log.read_text()
    device = overlay.add_device("dev1")
    pcap = tmp_path / "underlay.pcap"
    capture = netns.spawn(
        device.ns,
        ["tcpdump", "-i", "eth0", "-U", "--immediate-mode", "-w", str(pcap), "tcp", "port", "443"],
        tmp_path / "tcpdump.log",
    )
    try:
        deploy.wait_for("tcpdump", lambda: "listening" in (tmp_path / "tcpdump.log").read_text())
        overlay.start_device(device)
        netns.run(device.ns, ["ping", "-c", "3", "-i", "0.2", "169.254.0.1"])
        time.sleep(0.5)
    finally:
        netns.stop(capture)
    fields = ["-T", "fields", "-e", "websocket.opcode"]
    plain = netns.run(SRV, ["tshark", "-r", str(pcap), "-Y", "websocket", *fields])
    assert plain.stdout.strip() == ""  # without the keys: TLS, nothing to read
    decrypted = netns.run(
        SRV,
        [
            "tshark",
            "-r",
            str(pcap),
            "-o",
            f"tls.keylog_file:{keys}",
            "-d",
            "tcp.port==443,tls",
            "-Y",
            "websocket",
            *fields,
        ],
    )
    opcodes = decrypted.stdout.split()
    assert "1" in opcodes  # the hello, a text frame
    assert opcodes.count("2") >= 6  # binary frames: the pings there and back


def test_capture_one_device_as_pcap(overlay: Overlay, tmp_path: Path) -> None:
    overlay.start_server()
    for name in ("dev1", "dev2"):
        overlay.start_device(overlay.add_device(name))
    assert overlay.server_config is not None
    pcap_file = tmp_path / "dev1.pcap"

    def capture_argv(device: str, file: str, *extra: str) -> list[str]:
        assert overlay.server_config is not None
        return [
            str(BIN / "overlay"),
            "capture",
            "--config",
            str(overlay.server_config),
            device,
            "-w",
            file,
            *extra,
        ]

    capture = netns.spawn(
        SRV, capture_argv("dev1", str(pcap_file), "-c", "8"), tmp_path / "capture.log"
    )
    overlay.processes.append(capture)
    deploy.wait_for(
        "the capture's pcap header",
        lambda: pcap_file.exists() and pcap_file.stat().st_size >= 24,
        process=capture,
        log=tmp_path / "capture.log",
    )
    netns.run("ovlt-dev2", ["ping", "-c", "2", "-i", "0.2", "169.254.0.1"])  # not dev1: not kept
    netns.run("ovlt-dev1", ["ping", "-c", "4", "-i", "0.2", "169.254.0.1"])
    capture.wait(timeout=20)
    assert capture.returncode == 0, (tmp_path / "capture.log").read_text()
    lines = netns.run(SRV, ["tcpdump", "-nn", "-r", str(pcap_file)]).stdout.splitlines()
    assert len(lines) == 8
    assert sum("169.254.1.1 > 169.254.0.1: ICMP echo request" in line for line in lines) == 4
    assert sum("169.254.0.1 > 169.254.1.1: ICMP echo reply" in line for line in lines) == 4
    tshark = netns.run(SRV, ["tshark", "-r", str(pcap_file), "-T", "fields", "-e", "ip.src"])
    assert set(tshark.stdout.split()) == {"169.254.1.1", "169.254.0.1"}
    missing = netns.run(SRV, capture_argv("nobody", "-"))
    assert missing.returncode == 1 and "has no lease" in missing.stderr


def test_snmpwalk_of_the_server_through_pass_persist(overlay: Overlay, tmp_path: Path) -> None:
    overlay.start_server()
    overlay.start_device(overlay.add_device("dev1"))
    assert overlay.server_config is not None
    conf = tmp_path / "snmpd.conf"
    conf.write_text(
        "agentAddress udp:127.0.0.1:1161\n"
        "rocommunity monitor 127.0.0.1\n"
        f"pass_persist .1.3.6.1.4.1.8072.9999.9999.42 {BIN / 'overlay'} snmp-agent "
        f"--config {overlay.server_config}\n"
    )
    overlay.processes.append(services.run_snmpd(SRV, conf, tmp_path))
    env = services.snmp_env(tmp_path)
    time.sleep(1)
    walk = netns.run(
        SRV,
        [
            "snmpwalk",
            "-v2c",
            "-c",
            "monitor",
            "-On",
            "-m",
            "",
            "-t",
            "5",
            "127.0.0.1:1161",
            ".1.3.6.1.4.1.8072.9999.9999.42",
        ],
        env=env,
    )
    assert walk.returncode == 0, walk.stderr
    lines = walk.stdout
    base = ".1.3.6.1.4.1.8072.9999.9999.42"
    assert f"{base}.1.1.0 = Gauge32: 1" in lines  # ovlSessions
    assert f"{base}.1.2.0 = Gauge32: 1" in lines  # ovlLeases
    assert f'{base}.2.1.1.2.169.254.1.1 = STRING: "dev1"' in lines  # ovlSessionDevice
    assert f"{base}.2.1.1.1.169.254.1.1 = IpAddress: 169.254.1.1" in lines
    assert "Counter64" in lines


def test_status_page_in_headless_chromium(overlay: Overlay, tmp_path: Path) -> None:
    overlay.start_server()
    devices = [overlay.add_device(name) for name in ("dev1", "dev2")]
    for device in devices:
        overlay.start_device(device)
    assert overlay.server_config is not None
    token = (overlay.server_config.parent / "state" / "admin-token").read_text().strip()
    signal, shot = tmp_path / "dev2-stopped", tmp_path / "status-page.png"
    browser = subprocess.Popen(
        netns.exec_argv(
            SRV,
            [
                sys.executable,
                "-m",
                "tests.integration.browser",
                f"{ADMIN}/#token={token}",
                str(signal),
                str(shot),
            ],
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    overlay.processes.append(browser)  # type: ignore[arg-type]
    assert browser.stdout is not None
    first = browser.stdout.readline().split(" ", 1)
    assert first[0] == "first", first
    assert json.loads(first[1]) == [["dev1", "up"], ["dev2", "up"]]
    netns.stop(devices[1].process)  # type: ignore[arg-type]
    signal.touch()
    then = browser.stdout.readline().split(" ", 1)
    assert then[0] == "then", then
    assert json.loads(then[1]) == [["dev1", "up"], ["dev2", "down"]]  # the page updated itself
    browser.wait(timeout=30)
    phone = shot.with_name("status-page-phone.png")
    for png in (shot, phone):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("OVL_SAVE_SCREENSHOTS"):  # to refresh the pictures in docs/
        for png in (shot, phone):
            (Path(os.environ["OVL_SAVE_SCREENSHOTS"]) / png.name).write_bytes(png.read_bytes())
