"""Part ``fairness``: management traffic through a tunnel that carries a bulk download.

The lab with one device. Idle, then while the device downloads a 100 MB file
from the server (169.254.0.1, HTTP) again and again at full speed: the SNMP
response time of the device (a v2c get of sysName.0 every 0.2 s, sent by a
small client on the server's side that times each answer), and the offset and
delay chrony measures against the server (``chronyd -Q`` on the device). The
download goes from the server to the device, so the SNMP requests and the NTP
answers share the server's send queue for that tunnel with it.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lab import checks, netns, services
from lab.topology import SRV, VRF, Device, Lab

BULK = "bulk.bin"
PROBE = """
import socket, struct, sys, time
address, community, count = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
oid = bytes.fromhex("06082b06010201010500") + bytes.fromhex("0500")
def tlv(tag, body): return bytes([tag, len(body)]) + body
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
for n in range(count):
    request_id = struct.pack("!I", 0x10000000 + n)  # 4 bytes, as BER writes it back
    varbinds = tlv(0x30, tlv(0x30, oid))
    pdu = tlv(0xA0, tlv(2, request_id) + tlv(2, b"\\0") + tlv(2, b"\\0") + varbinds)
    message = tlv(0x30, tlv(2, b"\\x01") + tlv(4, community) + pdu)
    started = time.perf_counter()
    sock.sendto(message, (address, 161))
    try:
        while request_id not in sock.recv(2048):
            pass
        print(round((time.perf_counter() - started) * 1000, 3), flush=True)
    except TimeoutError:
        print("lost", flush=True)
    time.sleep(0.2)
"""


def fairness(work: Path, polls: int) -> dict[str, Any]:
    if netns.exists(SRV):
        raise RuntimeError("a lab is up: run scripts/lab down first (this part builds its own)")
    lab = Lab(work)
    try:
        lab.up(1)
        lab.wait_tunnels()
        (lab.dir / "files" / BULK).write_bytes(os.urandom(100 << 20))
        row = next(r for r in lab.status()["devices"] if r["vrf"] == VRF)
        device = lab.devices()[0]
        results = {"idle": measure(lab, device, row["overlay"], polls)}
        loop = (
            "while :; do curl -s -o /dev/null -w '%{speed_download}\\n' "
            f"http://{services.SERVER}/{BULK}; done"
        )
        log = lab.dir / "download.log"
        download = netns.spawn(device.ns, ["sh", "-c", loop], log)
        try:
            time.sleep(3)
            results["loaded"] = measure(lab, device, row["overlay"], polls)
        finally:
            netns.stop(download)
        speeds = [float(x) for x in log.read_text().split() if x.replace(".", "").isdigit()]
        results["loaded"]["download_mbit"] = (
            round(statistics.median(speeds) * 8 / 1e6, 1) if speeds else None
        )
        return results
    finally:
        lab.down()


def measure(lab: Lab, device: Device, address: str, polls: int) -> dict[str, Any]:
    """SNMP response times from the server's side, and chrony's view from the device."""
    probe = netns.run(
        SRV,
        [sys.executable, "-c", PROBE, address, services.COMMUNITY, str(polls)],
        timeout=polls * 3 + 30,
    )
    times = [float(x) for x in probe.stdout.split() if x != "lost"]
    lost = probe.stdout.split().count("lost")
    ok, detail = checks.ntp(lab, device)
    offset = re.search(r"offset (\S+) s", detail) if ok else None
    return {
        "snmp_median_ms": round(statistics.median(times), 2) if times else None,
        "snmp_p95_ms": round(sorted(times)[int(len(times) * 0.95) - 1], 2) if times else None,
        "snmp_lost": lost,
        "ntp_offset_ms": round(abs(float(offset.group(1))) * 1000, 3) if offset else None,
    }


def format_fairness(r: dict[str, Any]) -> list[str]:
    lines = [
        "fairness: SNMP and NTP through a tunnel idle, and while it carries a bulk download",
        f"  {'':<8} {'SNMP median ms':>15} {'SNMP p95 ms':>12} {'lost':>5} "
        f"{'NTP offset ms':>14} {'download Mbit/s':>16}",
    ]
    for name in ("idle", "loaded"):
        m = r[name]
        lines.append(
            f"  {name:<8} {m['snmp_median_ms']!s:>15} {m['snmp_p95_ms']!s:>12} "
            f"{m['snmp_lost']:>5} {m['ntp_offset_ms']!s:>14} {m.get('download_mbit', '-')!s:>16}"
        )
    return lines
