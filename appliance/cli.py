"""``appliance``: the device agent's command line.

appliance run --config appliance.toml      keep the tunnel up
appliance status --config appliance.toml   state, server, address and counters
appliance example-config                   print a commented appliance.toml
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from appliance import qoe
from appliance.config import EXAMPLE, ApplianceConfig, load_appliance_config
from appliance.exceptions import ApplianceError, InputError
from appliance.tunnel import DeviceTunnel
from overlay import control, log, process
from overlay.cli import duration
from overlay.exceptions import OverlayError
from overlay.tun import Tun


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="The overlay device agent.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="keep the tunnel up")
    run.add_argument("--config", required=True, type=Path, help="appliance.toml")
    status = commands.add_parser("status", help="show the tunnel's state")
    status.add_argument("--config", required=True, type=Path, help="appliance.toml")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    qoe = commands.add_parser("qoe-send", help="send QoE reports (JSON lines) to the collector")
    qoe.add_argument("--config", required=True, type=Path, help="appliance.toml")
    qoe.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="reports, one JSON object per line (default: standard input)",
    )
    commands.add_parser("example-config", help="print a commented appliance.toml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            config = load_appliance_config(args.config)
            log.configure(config.log_level)
            return process.run(lambda stop: run(config, stop))
        if args.command == "status":
            config = load_appliance_config(args.config)
            data = asyncio.run(control.fetch_status(config.control_socket))
            print(json.dumps(data, indent=2) if args.json else format_status(data))
            return 0
        if args.command == "qoe-send":
            config = load_appliance_config(args.config)
            text = read_input(args.file)
            answers = asyncio.run(qoe.send_reports(config, qoe.read_reports(text)))
            for answer in answers:
                print(json.dumps(answer))
            return 0 if all("stored" in a for a in answers) else 1
        if args.command == "example-config":
            print(EXAMPLE.read_text(), end="")
            return 0
    except (OverlayError, ApplianceError) as exc:
        return process.fail(str(exc))
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


def read_input(path: Path | None) -> str:
    if path is None:
        return sys.stdin.read()
    try:
        return path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


async def run(config: ApplianceConfig, stop: asyncio.Event) -> None:
    """Create the TUN, serve the control socket, keep the tunnel up until stopped."""
    tun = Tun.create(config.tun_name)
    try:
        tunnel = DeviceTunnel(config, tun)
        control_runner = await control.start(
            config.control_socket, lambda: {"tunnels": [tunnel.status()]}
        )
        structlog.get_logger("appliance").info(
            "agent started", device=config.device_id, servers=list(config.urls), tun=tun.name
        )
        try:
            await tunnel.run(stop)
        finally:
            await control_runner.cleanup()
    finally:
        tun.close()


def format_status(data: dict[str, Any]) -> str:
    lines = [
        f"{'VRF':<12} {'STATE':<11} {'ADDRESS':<16} {'FOR':>8} {'RX BYTES':>12} "
        f"{'TX BYTES':>12}  SERVER / LAST ERROR"
    ]
    now = time.time()
    for t in data["tunnels"]:
        lines.append(
            f"{t['vrf']:<12} {t['state']:<11} {t['address'] or '-':<16} "
            f"{duration(now - t['since']):>8} {t['rx_bytes']:>12} {t['tx_bytes']:>12}  "
            f"{t['server'] or '-'}"
        )
        if t["last_error"]:
            lines.append(f"{'':<12} last error: {t['last_error']}")
    return "\n".join(lines)
