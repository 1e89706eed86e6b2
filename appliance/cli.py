"""``appliance``: the device agent's command line.

appliance run --config appliance.toml      keep the tunnel up
appliance status --config appliance.toml   state, server, address and counters
appliance example-config                   print a commented appliance.toml
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import structlog

from appliance.config import EXAMPLE, ApplianceConfig, load_appliance_config
from appliance.exceptions import ApplianceError, InputError, VrfError
from appliance.tunnel import DeviceTunnel, RefusedVrf
from appliance.vrf import backend as vrf_backend
from overlay import control, log, process
from overlay.exceptions import OverlayError
from overlay.status import AgentStatus, agent_status
from overlay.text import duration
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
    qoe.add_argument("--vrf", help="the VRF whose tunnel carries the reports (default: the first)")
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
            # uvloop resolves each connect's address in libuv's thread pool, four threads
            # that then idle for good; one suffices for an agent's one connect at a time
            os.environ.setdefault("UV_THREADPOOL_SIZE", "1")
            return process.run(lambda stop: run(config, stop))
        if args.command == "status":
            config = load_appliance_config(args.config)
            data = agent_status(asyncio.run(control.fetch_status(config.control_socket)))
            print(json.dumps(data, indent=2) if args.json else format_status(data))
            return 0
        if args.command == "qoe-send":
            from appliance import qoe  # only this command sends reports

            config = load_appliance_config(args.config)
            log.configure(config.log_level)
            vrf = qoe.pick_vrf(config, args.vrf)
            text = read_input(args.file)
            answers = asyncio.run(qoe.send_reports(config, vrf, qoe.read_reports(text)))
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
    """Create a TUN per VRF, serve the control socket, keep every tunnel up until stopped.

    A VRF that cannot be used here (no such namespace, no kernel VRF support)
    is refused with its reason and shown in the status; the others run.
    """
    log = structlog.get_logger("appliance")
    rows: list[DeviceTunnel | RefusedVrf] = []
    tuns: list[Tun] = []
    try:
        for vrf in config.vrfs:
            backend = vrf_backend(vrf.backend, vrf.netns, vrf.device)
            try:
                await backend.check()
                tun = Tun.create(vrf.tun_name, backend.netns)
                tuns.append(tun)
                await backend.attach(tun)
            except VrfError as exc:
                log.error("VRF refused", device=config.device_id, vrf=vrf.name, error=str(exc))
                rows.append(RefusedVrf(vrf, backend.describe(), str(exc)))
                continue
            rows.append(DeviceTunnel(config, vrf, tun, backend))
        tunnels = [row for row in rows if isinstance(row, DeviceTunnel)]
        if not tunnels:
            refused = [row.reason for row in rows if isinstance(row, RefusedVrf)]
            raise VrfError(f"no VRF can run: {refused[0]}")
        control_runner = await control.start(
            config.control_socket,
            lambda: AgentStatus(device=config.device_id, tunnels=[row.status() for row in rows]),
        )
        log.info(
            "agent started",
            device=config.device_id,
            vrfs=[f"{t.vrf.name} ({t.backend.describe()}, {t.tun.name})" for t in tunnels],
        )
        try:
            await asyncio.gather(*(tunnel.run(stop) for tunnel in tunnels))
        finally:
            await control_runner.cleanup()
    finally:
        for tun in tuns:
            tun.close()


def format_status(data: AgentStatus) -> str:
    """One row per VRF, as H3C's ``display cloud-management state`` shows one per connection."""
    lines = [
        f"{'VRF':<12} {'BACKEND':<22} {'STATE':<10} {'ADDRESS':<15} {'FOR':>7} {'RX BYTES':>11} "
        f"{'TX BYTES':>11} {'FAILOVERS':>9}  SERVER"
    ]
    now = time.time()
    for t in data["tunnels"]:
        lines.append(
            f"{t['vrf']:<12} {t['backend']:<22} {t['state']:<10} {t['address'] or '-':<15} "
            f"{duration(now - t['since']):>7} {t['rx_bytes']:>11} {t['tx_bytes']:>11} "
            f"{t['failovers']:>9}  {t['server'] or '-'}"
        )
        if t["last_error"]:
            lines.append(f"{'':<12} last error: {t['last_error']}")
    return "\n".join(lines)
