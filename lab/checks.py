"""The checks an operator runs against the lab, shared by ``scripts/lab demo`` and the tests.

Each check is a function that returns ``(ok, detail)``: whether the service
answered through the overlay as it should, and one line saying what was seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab import netns, services
from lab.deploy import BIN
from lab.topology import NMS, SRV, Device, Lab

Result = tuple[bool, str]
Check = Callable[[], Result]


def ping(ns: str, target: str) -> Result:
    result = netns.run(ns, ["ping", "-c", "3", "-i", "0.2", "-W", "2", target], timeout=20)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", result.stdout)
    return result.returncode == 0, f"{target}: rtt {rtt.group(1)} ms" if rtt else "no reply"


def nat_blocks_underlay(device: Device) -> Result:
    """The NAT refuses a connection from the server side to the device's underlay address."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('{device.underlay}', 22), timeout=2)\n"
        "except OSError as e:\n    print(e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    result = netns.run(SRV, [sys.executable, "-c", code], timeout=10)
    return result.returncode == 0, f"{device.underlay}:22 from {SRV}: {result.stdout.strip()}"


def snmp_get(
    lab: Lab, device: Device, address: str, version: str, ns: str = SRV, timeout: int = 2
) -> Result:
    """sysName.0 of the device, asked from ``ns`` (the server side, or the NMS on the
    management LAN) over the overlay."""
    if version == "v2c":
        auth = ["-v2c", "-c", services.COMMUNITY]
    else:
        secrets = services.Secrets.load(lab.dir)
        auth = [
            "-v3",
            "-l",
            "authPriv",
            "-u",
            services.SNMP_USER,
            "-a",
            "SHA",
            "-A",
            secrets.auth,
            "-x",
            "AES",
            "-X",
            secrets.priv,
        ]
    result = netns.run(
        ns,
        [
            "snmpget",
            *auth,
            "-On",
            "-m",
            "",
            "-t",
            str(timeout),
            "-r",
            "1",
            address,
            ".1.3.6.1.2.1.1.5.0",
        ],
        env=services.snmp_env(lab.dir),
    )
    expected = f'.1.3.6.1.2.1.1.5.0 = STRING: "{device.name}"'
    line = (result.stdout or result.stderr).strip().splitlines()[-1:] or ["no answer"]
    return expected in result.stdout, f"{address} sysName.0: {line[0]}"


def lan_port_refused(address: str, port: int = 23) -> Result:
    """A TCP connection from the NMS to a port no rule allows goes unanswered: the node's
    firewall drops it (a device that saw it would answer with a reset)."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('{address}', {port}), timeout=2)\n"
        "except TimeoutError:\n    sys.exit(0)\n"
        "except OSError as e:\n    print(e); sys.exit(1)\n"
        "print('connected'); sys.exit(1)\n"
    )
    result = netns.run(NMS, [sys.executable, "-c", code], timeout=10)
    seen = result.stdout.strip() or "no answer within 2 s (dropped by the firewall)"
    return result.returncode == 0, f"{address}:{port}/tcp from {NMS}: {seen}"


def syslog(lab: Lab, device: Device, address: str, transport: str) -> Result:
    """A logger message from the device arrives in the server's log with the device's address."""
    token = f"ovl-lab-{transport}-{device.name}-{os.urandom(4).hex()}"
    flag = "-d" if transport == "udp" else "-T"
    netns.run(
        device.ns, ["logger", "-n", services.SERVER, "-P", "514", flag, "-t", "ovl-lab", token]
    )
    log = services.syslog_file(lab.dir)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if token in line:
                return f" {address} " in line, line
        time.sleep(0.1)
    return False, f"{token} did not arrive in {log}"


def ntp(lab: Lab, device: Device) -> Result:
    """chrony on the device measures its offset against the server's chrony, over the overlay."""
    pidfile = lab.dir / device.name / "chrony-once.pid"
    result = netns.run(
        device.ns,
        [
            "chronyd",
            "-Q",
            "-x",
            "-u",
            "root",
            "-t",
            "10",
            f"server {services.SERVER} iburst",
            "cmdport 0",
            f"pidfile {pidfile}",
        ],
        timeout=20,
    )
    found = re.search(r"System clock wrong by (\S+) seconds", result.stdout + result.stderr)
    return found is not None, f"offset {found.group(1)} s" if found else "no NTP answer"


def qoe(lab: Lab, device: Device, address: str) -> Result:
    """A QoE report sent by the device is stored with its device id and overlay address."""
    token = os.urandom(4).hex()
    report = json.dumps({"call": token, "mos": 4.3, "jitter_ms": 2.1, "loss_pct": 0.0})
    sent = netns.run(
        device.ns,
        [str(BIN / "appliance"), "qoe-send", "--config", str(lab.device_config(device))],
        input=report + "\n",
    )
    if sent.returncode != 0:
        return False, (sent.stderr or sent.stdout).strip()
    listed = netns.run(
        SRV,
        [
            str(BIN / "overlay"),
            "qoe",
            "--config",
            str(lab.server_config),
            device.id,
            "--json",
        ],
    )
    for row in json.loads(listed.stdout or "[]"):
        if row["report"].get("call") == token:
            return row["address"] == address, (
                f"report {row['id']} stored for {row['device']} from {row['address']}"
            )
    return False, f"report {token} not listed: {listed.stderr.strip()}"


def http_download(lab: Lab, device: Device) -> Result:
    """The device downloads a file served on 169.254.0.1 and its checksum matches."""
    target = lab.dir / device.name / "downloaded.bin"
    result = netns.run(
        device.ns,
        ["curl", "-sSf", "-o", str(target), f"http://{services.SERVER}/{services.FIRMWARE}"],
        timeout=30,
    )
    if result.returncode != 0:
        return False, result.stderr.strip()
    got = hashlib.sha256(Path(target).read_bytes()).hexdigest()
    want = services.firmware_sha256(lab.dir)
    return got == want, f"{services.FIRMWARE} {target.stat().st_size} bytes sha256 {got[:16]}…"


def all_checks(lab: Lab) -> list[tuple[str, Device, Check]]:
    """Every check, for every device, in the order the demo prints them."""
    checks: list[tuple[str, Device, Check]] = []
    rows = lab.status()["devices"]
    status = {(row["name"], row["vrf"]): row["overlay"] for row in rows}
    lan = {(row["name"], row["vrf"]): row["lan"] for row in rows}
    for device in lab.devices():
        main, *others = device.vrfs
        address = status[(device.name, main.name)]
        routable = lan[(device.name, main.name)]

        def bind(function: Callable[..., Result], *args: object) -> Check:
            return lambda: function(*args)

        checks += [
            ("ping device->server", device, bind(ping, device.ns, services.SERVER)),
            ("ping server->device", device, bind(ping, SRV, address)),
            ("nat blocks underlay", device, bind(nat_blocks_underlay, device)),
            ("snmp v2c get", device, bind(snmp_get, lab, device, address, "v2c")),
            ("snmp v3 authPriv get", device, bind(snmp_get, lab, device, address, "v3")),
            ("syslog udp", device, bind(syslog, lab, device, address, "udp")),
            ("syslog tcp", device, bind(syslog, lab, device, address, "tcp")),
            ("ntp", device, bind(ntp, lab, device)),
            ("qoe report", device, bind(qoe, lab, device, address)),
            ("http download", device, bind(http_download, lab, device)),
            ("nms snmp v2c get", device, bind(snmp_get, lab, device, routable, "v2c", NMS)),
            ("nms snmp v3 get", device, bind(snmp_get, lab, device, routable, "v3", NMS)),
            ("nms refused port", device, bind(lan_port_refused, routable)),
        ]
        for vrf in others:
            other = status[(device.name, vrf.name)]
            checks += [
                (f"{vrf.name} ->server", device, bind(ping, vrf.ns, services.SERVER)),
                (f"server->{vrf.name}", device, bind(ping, SRV, other)),
            ]
    return checks
