"""``scripts/lab``: the overlay in network namespaces on one machine (root needed).

scripts/lab up [--devices N] [--servers M] [--workers W]
                                 build the lab and start M servers (default 1) of W
                                 workers each (default 1) and N devices (default 2); with
                                 M > 1 the servers share PostgreSQL (ovl-db)
scripts/lab down                 stop and remove everything the lab made
scripts/lab status [--json]      the servers and each device's tunnel
scripts/lab demo [--devices N] [--servers M] [--workers W]
                                 bring the lab up, run every check, say how to look inside
scripts/lab kill server|srvN     SIGKILL a server (server: node 1) and start it again
scripts/lab stop srvN            stop a server (SIGTERM) and leave it stopped
scripts/lab start srvN           start a stopped server
scripts/lab cut DEVICE SECONDS   take a device's uplink down for a while
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

from lab import checks, deploy, netns, services
from lab.topology import MAX_SERVERS, NAT, NMS, ROUTER, SRV, VRF, Lab, Server, read_cmdline


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
        sub.add_argument(
            "--servers", type=int, default=1, choices=range(1, MAX_SERVERS + 1), metavar="M"
        )
        sub.add_argument("--workers", type=int, default=1, choices=range(1, 5), metavar="W")
    commands.add_parser("down")
    status = commands.add_parser("status")
    status.add_argument("--json", action="store_true")
    for name in ("kill", "stop", "start"):
        commands.add_parser(name).add_argument("what", metavar="server|srvN")
    cut = commands.add_parser("cut")
    cut.add_argument("device", help="dev1, dev2, …")
    cut.add_argument("seconds", type=float)
    args = parser.parse_args(argv)

    lab = Lab()
    try:
        if args.command == "up":
            lab.up(args.devices, args.servers, args.workers)
            lab.wait_tunnels()
            print(format_status(lab.status()))
        elif args.command == "down":
            lab.down()
            print("lab removed")
        elif args.command == "status":
            data = lab.status()
            print(json.dumps(data, indent=2) if args.json else format_status(data))
        elif args.command == "demo":
            return demo(lab, args.devices, args.servers, args.workers)
        elif args.command == "kill":
            kill_server(lab, lab.server(args.what))
        elif args.command == "stop":
            stop_server(lab, lab.server(args.what))
        elif args.command == "start":
            node = lab.server(args.what)
            lab.start(node)
            print(f"{node.name} started on {node.ip}")
        elif args.command == "cut":
            return cut_device(lab, args.device, args.seconds)
    except (TimeoutError, subprocess.CalledProcessError, OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def format_status(data: dict) -> str:
    lines = [f"lab files: {data['dir']}"]
    for s in data["servers"]:
        lines.append(
            f"{s['name']:<7} {s['netns']:<9} {s['overlay']:<15} {s['url']}  {s['state']}, "
            f"{s['sessions']} sessions"
        )
    for d in data["devices"]:
        lines.append(
            f"{d['name']:<7} {d['netns']:<9} {d['overlay'] or '-':<15} "
            f"underlay {d['underlay']:<13} lan {d['lan'] or '-':<14} vrf {d['vrf']}  {d['state']}"
            + (f" on {d['server']}" if d["server"] and len(data["servers"]) > 1 else "")
        )
    lan = data["lan"]
    lines.append(f"management LAN: router {lan['router']}, NMS {lan['nms']}, pool {lan['prefix']}")
    return "\n".join(lines)


def server_tun(workers: int) -> str:
    """How to watch the server's TUN (a worker's TUN holds the devices of that worker)."""
    if workers == 1:
        return f"  server TUN, all devices:  ip netns exec {SRV} tcpdump -ni ovl0"
    return (
        f"  worker 1's TUN:           ip netns exec {SRV} tcpdump -ni ovl0w1  (ovl0w2… the others)"
    )


def demo(lab: Lab, count: int, servers: int, workers: int = 1) -> int:
    fleet = f", {servers} servers sharing PostgreSQL" if servers > 1 else ""
    fleet += f", {workers} workers each" if workers > 1 else ""
    print(f"== bringing the lab up ({count} devices{fleet}) in network namespaces")
    started = time.monotonic()
    lab.up(count, servers, workers)
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
    if servers > 1:
        failed += not failover(lab)
    print()
    data = lab.status()
    print(format_status(data))
    first, device = data["devices"][0], lab.devices()[0]
    secrets = services.Secrets.load(lab.dir)
    print(f"""
The lab stays up. Look inside (as root, from this folder):
{server_tun(workers)}
  one device's TUN:         ip netns exec {first["netns"]} tcpdump -ni ovl0
  the underlay (TLS only):  ip netns exec {SRV} tcpdump -ni eth0 tcp port 443
  snmpwalk a device (v2c):  ip netns exec {SRV} snmpwalk -v2c -c {services.COMMUNITY} -On -m '' \\
                              {first["overlay"]} .1.3.6.1.2.1.1
  snmpwalk a device (v3):   ip netns exec {SRV} snmpwalk -v3 -l authPriv -u {services.SNMP_USER} \\
                              -a SHA -A {secrets.auth} -x AES -X {secrets.priv} -On -m '' \\
                              {first["overlay"]} .1.3.6.1.2.1.1
  syslog received:          tail {services.syslog_file(lab.dir)}
  QoE reports:              .venv/bin/overlay qoe --config {lab.server_config}
  server sessions:          ip netns exec {SRV} .venv/bin/overlay status \\
                              --config {lab.server_config}
  device tunnel:            .venv/bin/appliance status --config {lab.device_config(device)}
  NAT refusals:             ip netns exec {NAT} nft list chain ip ovl_nat forward
  from the NMS (LAN):       ip netns exec {NMS} snmpget -v2c -c {services.COMMUNITY} -On -m '' \\
                              {first["lan"]} .1.3.6.1.2.1.1.5.0
  the router's BGP routes:  ip netns exec {ROUTER} vtysh --vty_socket {lab.frr.dir} \\
                              -c 'show ip route bgp'
  the node's translation:   ip netns exec {SRV} nft list table ip overlay_lan
Cut a device off for 30 s: scripts/lab cut {device.name} 30
Kill the server:           scripts/lab kill server
Remove the lab:            scripts/lab down""")
    if failed:
        print(f"\n{failed} check(s) failed", file=sys.stderr)
    return 1 if failed else 0


def failover(lab: Lab) -> bool:
    """Stop the node that holds the most devices (node 1 after ``up``); time until the NMS
    reaches each of them again at the same LAN address through the router, now via
    another node; start the node again, and bring the devices back to node 1."""
    status = lab.status()["devices"]
    node = max(lab.servers(), key=lambda n: sum(r["server"] == n.name for r in status))
    rows = [r for r in status if r["server"] == node.name and r["vrf"] == VRF]
    devices = {d.name: d for d in lab.devices()}
    print(f"\n== stopping {node.name}: {len(rows)} devices move, the NMS must find them again")
    started = time.monotonic()
    stop_server(lab, node)
    waiting = {row["name"]: row["lan"] for row in rows}
    deadline = started + 90
    while waiting and time.monotonic() < deadline:
        for name, address in list(waiting.items()):
            if checks.snmp_get(lab, devices[name], address, "v2c", NMS, timeout=1)[0]:
                took = time.monotonic() - started
                print(f"   {name} answers the NMS at {address} after {took:.1f} s")
                del waiting[name]
    moved = {r["name"]: r for r in lab.status()["devices"] if r["vrf"] == VRF}
    same = all(moved[name]["lan"] == row["lan"] for name, row in ((r["name"], r) for r in rows))
    ok = not waiting and same
    print(
        f"   {'pass' if ok else 'FAIL'}: the NMS reached {len(rows) - len(waiting)} of "
        f"{len(rows)} moved devices at the same LAN address in {time.monotonic() - started:.1f} s"
    )
    lab.start(node)
    print(f"   {node.name} started again")
    bring_home(lab)
    return ok


def bring_home(lab: Lab) -> None:
    """Move every device back to node 1, where ``up`` put them and the checks' services
    run, so that the demo leaves the lab as it found it: stop the other nodes (the
    devices have nowhere else to go), wait for the devices on node 1, start them again."""
    home, *others = lab.servers()
    if all(row["server"] == home.name for row in lab.status()["devices"]):
        return
    for node in others:
        stop(lab, node)
    deploy.wait_for(
        f"the devices back on {home.name}",
        lambda: all(row["server"] == home.name for row in lab.status()["devices"]),
    )
    for node in others:
        lab.start(node)
    lab.wait_routes()
    names = ", ".join(node.name for node in others)
    print(f"   the devices are back on {home.name} ({names} stopped and started again)")


def kill_server(lab: Lab, node: Server) -> None:
    pids = lab.signal(node, signal.SIGKILL)
    print(f"killed {node.name} ({', '.join(map(str, pids)) or 'not running'}) with SIGKILL")
    time.sleep(0.5)
    lab.start(node)
    print(
        f"{node.name} started again on {node.ip}; watch the devices come back: scripts/lab status"
    )


def stop(lab: Lab, node: Server) -> list[int]:
    """SIGTERM a server and wait until it is gone; return its pids."""
    pids = lab.signal(node, signal.SIGTERM)
    deploy.wait_for(f"{node.name} to stop", lambda: not any(map(read_cmdline, pids)))
    return pids


def stop_server(lab: Lab, node: Server) -> None:
    pids = stop(lab, node)
    print(
        f"stopped {node.name} ({', '.join(map(str, pids)) or 'not running'}); start it again: "
        f"scripts/lab start {node.name}"
    )


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
