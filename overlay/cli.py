"""``overlay``: the server's command line.

overlay serve --config server.toml     run the server
overlay status --config server.toml    sessions, leases and counters of the running server
overlay certs init DIR --name NAME…    development certificates (trustme)
overlay hash-password                  hash a tunnel password for server.toml
overlay example-config                 print a commented server.toml
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from overlay import certs, control, log, process
from overlay.exceptions import OverlayError
from overlay.server import auth
from overlay.server.config import EXAMPLE, load_server_config
from overlay.server.qoe import ReportStore

MIN_PASSWORD = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlay", description="The overlay tunnel server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", required=True, type=Path, help="server.toml")

    status = commands.add_parser("status", help="show sessions, leases and counters")
    status.add_argument("--config", required=True, type=Path, help="server.toml")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")

    certs_parser = commands.add_parser("certs", help="development certificates")
    certs_commands = certs_parser.add_subparsers(
        dest="certs_command", required=True, metavar="ACTION"
    )
    init = certs_commands.add_parser("init", help="make a CA and a server certificate in DIR")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument(
        "--name",
        action="append",
        required=True,
        dest="names",
        help="DNS name or IP address of the server (repeat for several)",
    )

    qoe = commands.add_parser("qoe", help="list the QoE reports devices sent")
    qoe.add_argument("--config", required=True, type=Path, help="server.toml")
    qoe.add_argument("--device", help="only this device id")
    qoe.add_argument("--limit", type=int, default=50, help="the newest N reports (default 50)")
    qoe.add_argument("--json", action="store_true", help="print JSON lines for scripts")

    commands.add_parser("hash-password", help="read a password (stdin or prompt), print its hash")
    commands.add_parser("example-config", help="print a commented server.toml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            config = load_server_config(args.config)
            log.configure(config.log_level)
            from overlay.server.app import serve

            return process.run(lambda stop: serve(config, stop))
        if args.command == "status":
            config = load_server_config(args.config)
            data = asyncio.run(control.fetch_status(config.control_socket))
            print(json.dumps(data, indent=2) if args.json else format_status(data))
            return 0
        if args.command == "qoe":
            config = load_server_config(args.config)
            return list_qoe(config.qoe_file, args.device, args.limit, args.json)
        if args.command == "certs":
            for path in certs.init(args.directory, args.names):
                print(path)
            return 0
        if args.command == "hash-password":
            return hash_password()
        if args.command == "example-config":
            print(EXAMPLE.read_text(), end="")
            return 0
    except OverlayError as exc:
        return process.fail(str(exc))
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


def list_qoe(path: Path, device: str | None, limit: int, as_json: bool) -> int:
    if not path.exists():
        return process.fail(f"no QoE reports yet: {path} does not exist")
    store = ReportStore(path, readonly=True)
    try:
        reports = store.list(device, limit)
    finally:
        store.close()
    for r in reports:
        if as_json:
            print(
                json.dumps(
                    {
                        "id": r.id,
                        "received": r.received,
                        "device": r.device,
                        "vrf": r.vrf,
                        "address": r.address,
                        "report": r.report,
                    }
                )
            )
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.received))
            print(
                f"{r.id:>6} {when} {r.device:<20} {r.vrf:<12} {r.address:<15} "
                f"{json.dumps(r.report, separators=(',', ':'))}"
            )
    return 0


def hash_password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("tunnel password: ")
        if getpass.getpass("again: ") != password:
            return process.fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        return process.fail(f"the password must have at least {MIN_PASSWORD} characters")
    if password in auth.WELL_KNOWN:
        return process.fail("that is a well-known password; choose another")
    print(auth.hash_password(password))
    return 0


def format_status(data: dict[str, Any]) -> str:
    """The operator's view: one row per session, then totals."""
    server = data["server"]
    lines = [
        f"server {server['overlay']} on {server['tun']}, listening {server['listen']}, "
        f"{len(data['sessions'])} sessions, {server['leases']} leases (pool {server['pool']})",
        "",
        f"{'DEVICE':<20} {'VRF':<12} {'ADDRESS':<16} {'PEER':<16} {'UP':>8} "
        f"{'RX BYTES':>12} {'TX BYTES':>12} {'DROPS':>6}",
    ]
    now = time.time()
    for s in data["sessions"]:
        lines.append(
            f"{s['device']:<20} {s['vrf']:<12} {s['address']:<16} {s['peer']:<16} "
            f"{duration(now - s['since']):>8} {s['rx_bytes']:>12} {s['tx_bytes']:>12} "
            f"{sum(s['drops'].values()):>6}"
        )
    lines.append("")
    lines.append(
        "drops: " + (", ".join(f"{k}={v}" for k, v in sorted(data["drops"].items())) or "none")
    )
    lines.append(
        "refusals: "
        + (", ".join(f"{k}={v}" for k, v in sorted(data["refusals"].items())) or "none")
    )
    return "\n".join(lines)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
