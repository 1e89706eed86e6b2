"""``scripts/bench``: measure the overlay in network namespaces of its own (``ovlb-*``).

    scripts/bench [--part paths|reconnect]… [--devices N] [--quick] [--json FILE]
                  [--path direct|overlay|openvpn-tcp]… [--mtu N] [--codel T,I]
                  [--chart PNG] [--profile DIR]

Part ``paths``: between the same two namespaces joined by a veth, the direct
path, our overlay and OpenVPN 2.6 in TCP mode (AES-256-GCM, tcp-nodelay,
txqueuelen 1000, no DCO), each measured the same way: iperf3 TCP throughput
both ways, idle ping RTT, ping RTT while iperf3 (cubic) fills a 200 Mbit TBF
bottleneck on both underlay ends (median RTTs), and server CPU seconds per
Gbit carried. ``--mtu`` and ``--codel`` add overlay rows with those settings;
``--profile`` samples the overlay's server and device with py-spy while iperf3
runs each way; ``--chart`` draws the table.

Part ``reconnect`` (the resilience load check): N simulated devices
(``lab.loadgen``, protocol v1 without a TUN each) connect to one server; then
the server is restarted twice, gracefully (SIGTERM: devices hear 1001 and come
back at once) and by SIGKILL (no close frame: devices back off with jitter),
and the time until every device is back with its old address is measured. It
also reads the server's RSS per idle tunnel, the new tunnels per second and
the server's CPU time per new tunnel.

Numbers are printed as a table and written as JSON; nothing is asserted. Only
addresses inside the bench's own namespaces are used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import deploy, netns

PREFIX = "ovlb-"
SRV, GEN = "ovlb-srv", "ovlb-gen"
SERVER_IP = "198.18.0.1"
REPO = Path(__file__).resolve().parents[1]
# iperf3 on the server's overlay address: the device opens its flows (both with -R).
IPERF_RULE = deploy.firewall_rules('direction = "from-device"\nprotocol = "tcp"\nports = "5201"')


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


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


def two_namespaces(work: Path, client: str) -> None:
    """The server's namespace and ``client``'s, joined by a veth: 198.18.0.1 and .2."""
    work.mkdir(parents=True, exist_ok=True)
    netns.create(SRV)
    netns.create(client)
    netns.veth(SRV, "eth0", client, "eth0")
    netns.address(SRV, "eth0", f"{SERVER_IP}/24")
    netns.address(client, "eth0", "198.18.0.2/24")


def reconnect(work: Path, devices: int) -> dict[str, Any]:
    two_namespaces(work, GEN)
    # All devices share the generator's one address, unlike a real fleet: with
    # the default 28,000 ephemeral ports, a return while 10,000 old connections
    # linger made each connect() search long for a free port.
    netns.sysctl(GEN, "net.ipv4.ip_local_port_range", "1024 65535")
    password = os.urandom(12).hex()
    (work / "password").write_text(password)
    ca = deploy.pki(work / "pki", [SERVER_IP])
    config = deploy.server_config(work / "server", work / "pki", password, host=SERVER_IP)
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

    server = start_server()
    idle_rss = rss_kib(server.pid)
    idle_cpu = cpu_seconds(server.pid)
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
        handshake_cpu = (cpu_seconds(server.pid) - idle_cpu) / devices
        loadgen_cpu = cpu_seconds(loadgen.pid) / devices
        time.sleep(2)
        loaded_rss = rss_kib(server.pid)
        results: dict[str, Any] = {
            "devices": devices,
            "first_connect_s": up["seconds"],
            "tunnels_per_s": round(devices / up["seconds"], 1),
            "server_cpu_ms_per_tunnel": round(handshake_cpu * 1000, 3),
            "server_capacity_tunnels_per_s": round(1 / handshake_cpu) if handshake_cpu else None,
            "loadgen_cpu_ms_per_tunnel": round(loadgen_cpu * 1000, 3),
            "server_rss_idle_kib": idle_rss,
            "server_rss_loaded_kib": loaded_rss,
            "rss_per_tunnel_kib": round((loaded_rss - idle_rss) / devices, 1),
        }
        for how, sig in (("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL)):
            signalled = time.monotonic()
            server.send_signal(sig)
            server.wait(timeout=60)
            results[f"server_gone_after_{how}_s"] = round(time.monotonic() - signalled, 2)
            started = time.monotonic()
            server = start_server()
            results[f"server_up_after_{how}_s"] = round(time.monotonic() - started, 2)
            started_cpu = cpu_seconds(server.pid)
            back = events.wait("back", timeout=120 + devices / 20)
            returning_cpu = (cpu_seconds(server.pid) - started_cpu) / devices
            results[f"server_cpu_ms_per_return_after_{how}"] = round(returning_cpu * 1000, 3)
            results[f"back_after_{how}_s"] = back["seconds"]
            results[f"same_addresses_after_{how}"] = back["same_addresses"]
            results[f"attempts_after_{how}"] = back["attempts"]
        return results
    finally:
        loadgen.terminate()
        loadgen.wait(timeout=30)
        netns.stop(server)


OPENVPN_NET = "198.19.250"  # the OpenVPN tunnel's own subnet, inside the bench namespaces
DEV = "ovlb-dev"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(
    client_ns: str,
    server_ns: str,
    address: str,
    seconds: float,
    reverse: bool,
    extra: tuple[str, ...] = (),
) -> float:
    """TCP throughput in Mbit/s from ``client_ns`` to ``address`` (the other way with reverse)."""
    server = netns.spawn(server_ns, ["iperf3", "-s", "-1", "-B", address], Path("/dev/null"))
    try:
        time.sleep(0.5)
        argv = ["iperf3", "-c", address, "-t", str(seconds), "-J", *extra]
        result = netns.run(client_ns, argv + (["-R"] if reverse else []), timeout=seconds + 60)
        data = json.loads(result.stdout)
        return round(float(data["end"]["sum_received"]["bits_per_second"]) / 1e6, 1)
    finally:
        netns.stop(server)


def ping_rtt(ns: str, address: str, count: int, interval: float) -> float:
    """The median RTT in ms of ``count`` pings: under load a few pings that meet a
    burst or a drop would move the mean more than the queue does."""
    result = netns.run(
        ns,
        ["ping", "-n", "-c", str(count), "-i", str(interval), address],
        timeout=count * interval + 30,
    )
    times = [
        float(x.split("time=")[1].split()[0]) for x in result.stdout.splitlines() if "time=" in x
    ]
    return round(float(statistics.median(times)), 3)


def measure(
    name: str, server_pid: int | None, address: str, seconds: float, pings: int
) -> dict[str, Any]:
    """One path: throughput both ways, idle RTT, RTT under load, server CPU per Gbit."""
    before = cpu_seconds(server_pid) if server_pid else 0.0
    up = iperf(DEV, SRV, address, seconds, reverse=False)
    used = (cpu_seconds(server_pid) - before) if server_pid else None
    down = iperf(DEV, SRV, address, seconds, reverse=True)
    idle = ping_rtt(DEV, address, pings, 0.01)
    for ns in (SRV, DEV):  # a 200 Mbit bottleneck on both underlay ends
        netns.run(
            ns,
            [
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                "200mbit",
                "burst",
                "64kb",
                "latency",
                "400ms",
            ],
            check=True,
        )
    try:
        server = netns.spawn(SRV, ["iperf3", "-s", "-1", "-B", address], Path("/dev/null"))
        time.sleep(0.5)
        load = netns.spawn(
            DEV, ["iperf3", "-c", address, "-t", str(seconds + 2), "-C", "cubic"], Path("/dev/null")
        )
        time.sleep(1.5)  # past slow start
        loaded = ping_rtt(DEV, address, int(seconds * 10), 0.05)
        netns.stop(load)
        netns.stop(server)
    finally:
        for ns in (SRV, DEV):
            netns.run(ns, ["tc", "qdisc", "del", "dev", "eth0", "root"])
    gbit = up * seconds / 1000
    return {
        "path": name,
        "up_mbit": up,
        "down_mbit": down,
        "idle_rtt_ms": idle,
        "loaded_rtt_ms": loaded,
        "server_cpu_s_per_gbit": round(used / gbit, 2) if used is not None and gbit else None,
    }


OPENVPN_SERVER = """dev ovpn0
dev-type tun
proto tcp-server
local {server}
port 1194
topology subnet
server {net}.0 255.255.255.0
ca {pki}/ca.pem
cert {pki}/server.pem
key {pki}/server.key
dh none
data-ciphers AES-256-GCM
tcp-nodelay
txqueuelen 1000
disable-dco
keepalive 10 60
verb 1
"""

OPENVPN_CLIENT = """client
dev ovpn0
dev-type tun
proto tcp-client
remote {server} 1194
nobind
ca {pki}/ca.pem
cert {pki}/client.pem
key {pki}/client.key
data-ciphers AES-256-GCM
txqueuelen 1000
disable-dco
verb 1
"""


PATHS = ("direct", "overlay", "openvpn-tcp")


def paths(
    work: Path,
    seconds: float,
    pings: int,
    which: list[str],
    mtu: int | None,
    profile: Path | None = None,
    codel: tuple[float, float] | None = None,
) -> list[dict[str, Any]]:
    """Direct veth, the overlay and OpenVPN-TCP (those in ``which``) between the same two
    namespaces; the overlay also with MTU ``mtu`` and with CoDel's ``codel``, when given."""
    two_namespaces(work, DEV)
    results = []
    if "direct" in which:
        results.append(measure("direct", None, SERVER_IP, seconds, pings))
    if "overlay" in which:  # the defaults, then each variant asked for as a row of its own
        results.append(overlay_path(work, seconds, pings, None, profile, None))
        if codel:
            results.append(overlay_path(work, seconds, pings, None, None, codel))
        if mtu:
            results.append(overlay_path(work, seconds, pings, mtu, None, None))
    if "openvpn-tcp" in which:
        results.append(openvpn_path(work, seconds, pings))
    return results


def profile_overlay(directory: Path, pids: dict[str, int], seconds: float) -> None:
    """Sample the server and the device with py-spy while iperf3 runs each way; write
    the stacks and a summary of the top functions (by own samples) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for direction, reverse in (("up", False), ("down", True)):
        spies = {
            role: subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--native",
                    "--rate",
                    "250",
                    "--duration",
                    str(int(seconds)),
                    "--format",
                    "raw",
                    "--pid",
                    str(pid),
                    "--output",
                    str(directory / f"{role}-{direction}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in pids.items()
        }
        iperf(DEV, SRV, "169.254.0.1", seconds + 1, reverse=reverse)
        for spy in spies.values():
            spy.wait(timeout=60)
    with open(directory / "summary.txt", "w") as summary:
        for stacks in sorted(directory.glob("*-*.txt")):
            summary.write(f"{stacks.stem}\n{top_functions(stacks)}\n")


def top_functions(stacks: Path, count: int = 12) -> str:
    """Where the event loop thread spends its samples: the Python functions most often
    on its stack (inclusive), and the frames it is in when sampled (own time), each as
    % of all its samples. py-spy's raw format: one ``frame;frame;… samples`` per line."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, field = line.rpartition(" ")
        if "Thread._bootstrap" in stack:  # idle worker threads (netlink, DNS)
            continue
        samples = int(field)
        total += samples
        frames = stack.split(";")
        leaf = frames[-1].split(" (")[0]
        own[leaf] = own.get(leaf, 0) + samples
        for name in {f.split(" (")[0] for f in frames if ".py:" in f}:
            inclusive[name] = inclusive.get(name, 0) + samples

    def ranked(counts: dict[str, int]) -> list[str]:
        top = [item for item in sorted(counts.items(), key=lambda i: -i[1]) if item[1] < total]
        return [f"{100 * n / total:6.1f}%  {name}" for name, n in top[:count]]

    return "\n".join(
        ["Python functions, inclusive:", *ranked(inclusive), "own time:", *ranked(own)]
    )


def queue_settings(codel: tuple[float, float] | None) -> str:
    """CoDel's target and interval for both ends' config, when not the defaults."""
    if codel is None:
        return ""
    return f"queue_target = {codel[0]}\nqueue_interval = {codel[1]}\n"


def overlay_path(
    work: Path,
    seconds: float,
    pings: int,
    mtu: int | None,
    profile: Path | None,
    codel: tuple[float, float] | None,
) -> dict[str, Any]:
    password = os.urandom(12).hex()
    ca = deploy.pki(work / "pki", [SERVER_IP])
    name = "overlay" + (f"-mtu{mtu}" if mtu else "") + ("-codel" if codel else "")
    config = deploy.server_config(
        work / name / "server",
        work / "pki",
        password,
        host=SERVER_IP,
        extra=IPERF_RULE,
        overlay=(f"mtu = {mtu}\n" if mtu else "") + queue_settings(codel),
    )
    server = deploy.start_server(SRV, config)
    device = deploy.appliance_config(
        work / name / "dev",
        "bench",
        [f"wss://{SERVER_IP}/tun"],
        ca,
        password,
        extra="[tun]\n" + queue_settings(codel),
    )
    agent = deploy.start_appliance(DEV, device)
    try:
        deploy.wait_for(
            "overlay up",
            deploy.tunnel_up(device.parent / "state" / "bench.sock"),
            timeout=30,
            log=device.parent / "appliance.log",
        )
        if profile is not None:
            profile_overlay(profile, {"server": server.pid, "device": agent.pid}, seconds)
        return measure(name, server.pid, "169.254.0.1", seconds, pings)
    finally:
        netns.stop(agent)
        netns.stop(server)


def openvpn_path(work: Path, seconds: float, pings: int) -> dict[str, Any]:
    import trustme  # the OpenVPN peers' certificates, as for the overlay

    vpn = work / "openvpn"
    vpn.mkdir()
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(vpn / "ca.pem"))
    for role, name in (("server", SERVER_IP), ("client", "bench-client")):
        issued = authority.issue_cert(name, common_name=role)
        issued.cert_chain_pems[0].write_to_path(str(vpn / f"{role}.pem"))
        issued.private_key_pem.write_to_path(str(vpn / f"{role}.key"))
    (vpn / "server.conf").write_text(
        OPENVPN_SERVER.format(server=SERVER_IP, net=OPENVPN_NET, pki=vpn)
    )
    (vpn / "client.conf").write_text(OPENVPN_CLIENT.format(server=SERVER_IP, pki=vpn))
    vpn_server = netns.spawn(
        SRV, ["openvpn", "--config", str(vpn / "server.conf")], vpn / "server.log"
    )
    time.sleep(1)
    vpn_client = netns.spawn(
        DEV, ["openvpn", "--config", str(vpn / "client.conf")], vpn / "client.log"
    )
    try:
        deploy.wait_for(
            "OpenVPN up",
            lambda: "Initialization Sequence Completed" in (vpn / "client.log").read_text(),
            timeout=30,
            log=vpn / "client.log",
        )
        return measure("openvpn-tcp", vpn_server.pid, f"{OPENVPN_NET}.1", seconds, pings)
    finally:
        netns.stop(vpn_client)
        netns.stop(vpn_server)


def codel_pair(text: str) -> tuple[float, float]:
    """``"0.5,10"`` (milliseconds) as seconds."""
    try:
        target, interval = (float(x) / 1000 for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not TARGET,INTERVAL in ms (e.g. 0.5,10)"
        ) from None
    return target, interval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", choices=["paths", "reconnect"], action="append")
    parser.add_argument(
        "--path",
        choices=PATHS,
        action="append",
        help="measure only this path of part paths (repeat for more; default: all three)",
    )
    parser.add_argument(
        "--mtu",
        type=int,
        help="part paths: also measure the overlay with this MTU (its default is 1400)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="part paths: also profile the overlay's server and device with py-spy "
        "during iperf3 each way, into DIR",
    )
    parser.add_argument(
        "--codel",
        type=codel_pair,
        metavar="TARGET,INTERVAL",
        help="part paths: also measure the overlay with this CoDel target and interval "
        "in ms at both ends (its default is 5,100; 0.5,10 suits a LAN)",
    )
    parser.add_argument(
        "--chart", type=Path, metavar="PNG", help="part paths: also draw the results here"
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run that keeps the script working (CI): 50 devices",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    devices = 50 if args.quick else args.devices
    parts = args.part or ["paths", "reconnect"]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "quick": args.quick,
    }
    for ns in netns.names(PREFIX):
        netns.remove(ns)
    with tempfile.TemporaryDirectory(prefix="ovl-bench-") as tmp:
        try:
            if "paths" in parts:
                seconds, pings = (2, 20) if args.quick else (10, 100)
                results["paths"] = paths(
                    Path(tmp) / "paths",
                    seconds,
                    pings,
                    args.path or list(PATHS),
                    args.mtu,
                    args.profile,
                    args.codel,
                )
                for ns in netns.names(PREFIX):
                    netns.remove(ns)
            if "reconnect" in parts:
                results["reconnect"] = reconnect(Path(tmp) / "reconnect", devices)
        finally:
            for ns in netns.names(PREFIX):
                netns.remove(ns)
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.chart and "paths" in results:
        from lab.chart import draw

        draw(results, args.chart)
    return 0


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['date']}  {results['machine']}{'  (quick)' if results['quick'] else ''}"]
    if "paths" in results:
        lines.append(
            f"{'path':<16} {'up Mbit/s':>10} {'down Mbit/s':>12} {'idle RTT ms':>12} "
            f"{'RTT under load ms':>18} {'server CPU s/Gbit':>18}"
        )
        for row in results["paths"]:
            cpu = row["server_cpu_s_per_gbit"]
            lines.append(
                f"{row['path']:<16} {row['up_mbit']:>10} {row['down_mbit']:>12} "
                f"{row['idle_rtt_ms']:>12} {row['loaded_rtt_ms']:>18} "
                f"{'-' if cpu is None else cpu:>18}"
            )
    if "reconnect" in results:
        r = results["reconnect"]
        lines += [
            f"reconnect storm, {r['devices']} simulated devices",
            f"  first connect of all          {r['first_connect_s']:>8.2f} s "
            f"({r['tunnels_per_s']} tunnels/s)",
            f"  server CPU per new tunnel     {r['server_cpu_ms_per_tunnel']:>8.3f} ms "
            f"(one server process: {r['server_capacity_tunnels_per_s']} tunnels/s)",
            f"  load generator CPU per tunnel {r['loadgen_cpu_ms_per_tunnel']:>8.3f} ms "
            "(its own TLS and WebSocket client, on the same 2 cores; its start-up included)",
            f"  server RSS per idle tunnel    {r['rss_per_tunnel_kib']:>8.1f} KiB "
            f"({r['server_rss_idle_kib']} KiB idle, {r['server_rss_loaded_kib']} KiB loaded)",
            f"  all back after SIGTERM        {r['back_after_sigterm_s']:>8.2f} s "
            f"(same addresses: {r['same_addresses_after_sigterm']}; the server took "
            f"{r['server_gone_after_sigterm_s']} s to stop, {r['server_up_after_sigterm_s']} s "
            "to answer again)",
            f"  all back after SIGKILL        {r['back_after_sigkill_s']:>8.2f} s "
            f"(same addresses: {r['same_addresses_after_sigkill']}; the server took "
            f"{r['server_up_after_sigkill_s']} s to answer again)",
            f"  server CPU per returning tunnel "
            f"{r['server_cpu_ms_per_return_after_sigkill']:>6.3f} ms "
            "(after SIGKILL: the enrolment and the lease exist)",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
