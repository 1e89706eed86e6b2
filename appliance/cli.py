"""``appliance``: the device agent's command line.

Every command reads /etc/appliance/appliance.toml unless --config or
$APPLIANCE_CONFIG names another file.

appliance run              keep the tunnels up
appliance status           state, server, address and counters (exit 3: a tunnel is down)
appliance check-config     load appliance.toml and say what is wrong
appliance example-config   print a commented appliance.toml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import structlog

from appliance.config import EXAMPLE, ApplianceConfig, VrfConfig, load_appliance_config
from appliance.exceptions import ApplianceError, InputError, VrfError, VrfMissing
from appliance.failover import backoff
from appliance.tunnel import DeviceTunnel, RefusedVrf
from appliance.vrf import Backend
from appliance.vrf import backend as vrf_backend
from overlay import __version__, control, log, process
from overlay.exceptions import OverlayError
from overlay.status import AgentStatus, agent_status
from overlay.text import duration
from overlay.tun import Tun

VRF_RETRY_MIN, VRF_RETRY_MAX = 1.0, 60.0  # seconds between looks for a missing VRF


def default_config() -> Path:
    """Where the commands read their configuration without --config."""
    return Path(os.environ.get("APPLIANCE_CONFIG") or "/etc/appliance/appliance.toml")


CONFIG_HELP = "appliance.toml (default: $APPLIANCE_CONFIG, else /etc/appliance/appliance.toml)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="The overlay device agent.")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="keep the tunnel up")
    run.add_argument("--config", type=Path, help=CONFIG_HELP)
    status = commands.add_parser(
        "status", help="show the tunnels' state; exits 3 when one is not up (as LSB status)"
    )
    status.add_argument("--config", type=Path, help=CONFIG_HELP)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    qoe = commands.add_parser("qoe-send", help="send QoE reports (JSON lines) to the collector")
    qoe.add_argument("--config", type=Path, help=CONFIG_HELP)
    qoe.add_argument("--vrf", help="the VRF whose tunnel carries the reports (default: the first)")
    qoe.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="reports, one JSON object per line (default: standard input)",
    )
    check = commands.add_parser("check-config", help="load appliance.toml and say what is wrong")
    check.add_argument("--config", type=Path, help=CONFIG_HELP)
    commands.add_parser("example-config", help="print a commented appliance.toml")
    return parser


@process.quiet_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "config", False) is None:
        args.config = default_config()
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
            return 0 if all(t["state"] == "up" for t in data["tunnels"]) else 3  # as LSB status
        if args.command == "check-config":
            config = load_appliance_config(args.config)
            vrfs = ", ".join(f"{v.name} via {' '.join(v.urls)}" for v in config.vrfs)
            print(f"{args.config}: OK ({vrfs})")
            return 0
        if args.command == "qoe-send":
            from appliance import qoe  # only this command sends reports

            config = load_appliance_config(args.config)
            log.configure(config.log_level)
            vrf = qoe.pick_vrf(config, args.vrf)
            text = read_input(args.file)
            answers = asyncio.run(qoe.send_reports(config, vrf, qoe.read_reports(text)))
            print(json.dumps(answers, indent=2))
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

    A VRF that cannot be used here (no kernel VRF support) is refused with its
    reason and shown in the status; the others run. A VRF whose namespace or
    device does not exist yet (the network comes up after the agent) waits:
    the agent looks again with backoff, up to a minute apart, and starts its
    tunnel once it is there.
    """
    log = structlog.get_logger("appliance")
    rows: dict[str, DeviceTunnel | RefusedVrf] = {}
    tuns: list[Tun] = []

    async def bring_up(vrf: VrfConfig, backend: Backend) -> DeviceTunnel:
        await backend.check()
        tun = Tun.create(vrf.tun_name, backend.netns)
        try:
            await backend.attach(tun)
        except VrfError:
            tun.close()
            raise
        tuns.append(tun)
        return DeviceTunnel(config, vrf, tun, backend)

    async def keep_trying(vrf: VrfConfig, backend: Backend) -> None:
        for delay in backoff(VRF_RETRY_MIN, VRF_RETRY_MAX):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
                return
            try:
                tunnel = await bring_up(vrf, backend)
            except VrfMissing as exc:
                rows[vrf.name] = RefusedVrf(vrf, backend.describe(), str(exc), "waiting")
                continue
            except VrfError as exc:
                log.error("VRF refused", device=config.device_id, vrf=vrf.name, error=str(exc))
                rows[vrf.name] = RefusedVrf(vrf, backend.describe(), str(exc))
                return
            log.info("VRF ready", device=config.device_id, vrf=vrf.name, tun=tunnel.tun.name)
            rows[vrf.name] = tunnel
            await tunnel.run(stop)
            return

    waiting: list[tuple[VrfConfig, Backend]] = []
    try:
        for vrf in config.vrfs:
            backend = vrf_backend(vrf.backend, vrf.netns, vrf.device)
            try:
                rows[vrf.name] = await bring_up(vrf, backend)
            except VrfMissing as exc:
                log.warning("VRF waiting", device=config.device_id, vrf=vrf.name, error=str(exc))
                rows[vrf.name] = RefusedVrf(vrf, backend.describe(), str(exc), "waiting")
                waiting.append((vrf, backend))
            except VrfError as exc:
                log.error("VRF refused", device=config.device_id, vrf=vrf.name, error=str(exc))
                rows[vrf.name] = RefusedVrf(vrf, backend.describe(), str(exc))
        tunnels = [row for row in rows.values() if isinstance(row, DeviceTunnel)]
        if not tunnels and not waiting:
            refused = [row.reason for row in rows.values() if isinstance(row, RefusedVrf)]
            raise VrfError(f"no VRF can run: {refused[0]}")
        control_runner = await control.start(
            config.control_socket,
            lambda: AgentStatus(
                device=config.device_id,
                version=__version__,
                tunnels=[row.status() for row in rows.values()],
            ),
        )
        log.info(
            "agent started",
            device=config.device_id,
            vrfs=[f"{t.vrf.name} ({t.backend.describe()}, {t.tun.name})" for t in tunnels],
            waiting=[vrf.name for vrf, _ in waiting],
        )
        try:
            await asyncio.gather(
                *(tunnel.run(stop) for tunnel in tunnels),
                *(keep_trying(vrf, backend) for vrf, backend in waiting),
            )
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
