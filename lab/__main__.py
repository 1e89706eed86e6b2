"""``scripts/lab``: the overlay in network namespaces on one machine (root needed).

scripts/lab up [--devices N]     build the lab and start the server and N devices (default 2)
scripts/lab down                 stop and remove everything the lab made
scripts/lab status [--json]      the server and each device's tunnel
scripts/lab demo [--devices N]   bring the lab up, run every check, say how to look inside
scripts/lab kill server          SIGKILL the server and start it again
scripts/lab cut DEVICE SECONDS   take a device's uplink down for a while
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from lab import checks, deploy, netns, services
from lab.topology import NAT, SERVER_IP, SRV, Lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("up", "demo"):
        sub = commands.add_parser(name)
        sub.add_argument("--devices", type=int, default=2, choices=range(1, 51), metavar="N")
    commands.add_parser("down")
    status = commands.add_parser("status")
    status.add_argument("--json", action="store_true")
    kill = commands.add_parser("kill")
    kill.add_argument("what", choices=["server"])
    cut = commands.add_parser("cut")
    cut.add_argument("device", help="dev1, dev2, …")
    cut.add_argument("seconds", type=float)
    args = parser.parse_args(argv)

    lab = Lab()
    try:
        if args.command == "up":
            lab.up(args.devices)
            lab.wait_tunnels()
            print(format_status(lab.status()))
        elif args.command == "down":
            lab.down()
            print("lab removed")
        elif args.command == "status":
            data = lab.status()
            print(json.dumps(data, indent=2) if args.json else format_status(data))
        elif args.command == "demo":
            return demo(lab, args.devices)
        elif args.command == "kill":
            kill_server(lab)
        elif args.command == "cut":
            return cut_device(lab, args.device, args.seconds)
    except (TimeoutError, subprocess.CalledProcessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def format_status(data: dict) -> str:
    server = data["server"]
    lines = [
        f"lab files: {data['dir']}",
        f"server  {server['netns']:<9} {server['overlay']:<15} {server['url']}  {server['state']}",
    ]
    for d in data["devices"]:
        lines.append(
            f"{d['name']:<7} {d['netns']:<9} {d['overlay'] or '-':<15} "
            f"underlay {d['underlay']:<13} vrf {d['vrf']}  {d['state']}"
        )
    return "\n".join(lines)


def demo(lab: Lab, count: int) -> int:
    print(f"== bringing the lab up ({count} devices) in network namespaces")
    started = time.monotonic()
    lab.up(count)
    lab.wait_tunnels()
    print(f"   tunnels up in {time.monotonic() - started:.1f} s\n")
    failed = 0
    print(f"{'CHECK':<21} {'DEVICE':<6} {'RESULT':<6} {'TIME':>6}  DETAIL")
    for name, device, check in checks.all_checks(lab):
        start = time.monotonic()
        ok, detail = check()
        failed += not ok
        print(
            f"{name:<21} {device.name:<6} {'pass' if ok else 'FAIL':<6} "
            f"{time.monotonic() - start:>5.2f}s  {detail}"
        )
    print()
    data = lab.status()
    print(format_status(data))
    first, device = data["devices"][0], lab.devices()[0]
    secrets = services.Secrets.load(lab.dir)
    print(f"""
The lab stays up. Look inside (as root, from this folder):
  server TUN, all devices:  ip netns exec {SRV} tcpdump -ni ovl0
  one device's TUN:         ip netns exec {first["netns"]} tcpdump -ni ovl0
  the underlay (TLS only):  ip netns exec {SRV} tcpdump -ni eth0 tcp port 443
  snmpwalk a device (v2c):  ip netns exec {SRV} snmpwalk -v2c -c {services.COMMUNITY} -On -m '' \\
                              {first["overlay"]} .1.3.6.1.2.1.1
  snmpwalk a device (v3):   ip netns exec {SRV} snmpwalk -v3 -l authPriv -u {services.SNMP_USER} \\
                              -a SHA -A {secrets.auth} -x AES -X {secrets.priv} -On -m '' \\
                              {first["overlay"]} .1.3.6.1.2.1.1
  syslog received:          tail {services.syslog_file(lab.dir)}
  QoE reports:              .venv/bin/overlay qoe --config {lab.server_config}
  server sessions:          .venv/bin/overlay status --config {lab.server_config}
  device tunnel:            .venv/bin/appliance status --config {lab.device_config(device)}
  NAT refusals:             ip netns exec {NAT} nft list chain ip ovl_nat forward
Cut a device off for 30 s: scripts/lab cut {device.name} 30
Kill the server:           scripts/lab kill server
Remove the lab:            scripts/lab down""")
    if failed:
        print(f"\n{failed} check(s) failed", file=sys.stderr)
    return 1 if failed else 0


def kill_server(lab: Lab) -> None:
    pids = [pid for pid in netns.pids_in(SRV) if b"overlay" in read_cmdline(pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    print(f"killed the server ({', '.join(map(str, pids)) or 'not running'}) with SIGKILL")
    time.sleep(0.5)
    deploy.start_server(SRV, lab.server_config)
    deploy.wait_for("server start", lambda: deploy.server_status(lab.server_control))
    print(f"server started again on {SERVER_IP}; watch the devices come back: scripts/lab status")


def read_cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def cut_device(lab: Lab, name: str, seconds: float) -> int:
    device = next((d for d in lab.devices() if d.name == name), None)
    if device is None:
        print(
            f"error: no device {name!r} in the lab (have: "
            f"{', '.join(d.name for d in lab.devices()) or 'none'})",
            file=sys.stderr,
        )
        return 1
    link = f"lan{device.index}"
    print(f"cutting {name}'s uplink ({NAT} {link}) for {seconds:g} s")
    netns.link_state(NAT, link, up=False)
    try:
        time.sleep(seconds)
    finally:
        netns.link_state(NAT, link, up=True)
    print(f"{name}'s uplink is back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
