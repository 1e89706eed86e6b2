"""Send QoE reports to the server's collector over the overlay (TLS over TCP, JSON lines).

The collector listens on the server's overlay address; the device's own
overlay address tells the server who sent a report, so a report carries no
credentials. TLS verifies the server as the tunnel does: the same CA, and the
name of the server the tunnel is connected to now (or ``server_name``).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import yarl

from appliance.config import ApplianceConfig, VrfConfig
from appliance.exceptions import ConnectError, InputError, UnreachableError
from appliance.tls import client_tls
from appliance.vrf import backend as vrf_backend
from overlay import control
from overlay.status import agent_status

TIMEOUT = 10.0


def read_reports(text: str) -> list[bytes]:
    """The non-empty lines of ``text``, each checked to be one JSON object."""
    reports = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            report = json.loads(line)
        except ValueError as exc:
            raise InputError(f"report line {number} is not JSON: {exc}") from None
        if not isinstance(report, dict):
            raise InputError(f"report line {number} is not a JSON object")
        reports.append(json.dumps(report, separators=(",", ":")).encode())
    if not reports:
        raise InputError("no report to send: give one JSON object per line")
    return reports


def pick_vrf(config: ApplianceConfig, name: str | None) -> VrfConfig:
    """The VRF whose tunnel carries the reports: the named one, or the first."""
    if name is None:
        return config.vrfs[0]
    for vrf in config.vrfs:
        if vrf.name == name:
            return vrf
    known = ", ".join(v.name for v in config.vrfs)
    raise InputError(f"no VRF {name!r} in the config (have: {known})")


async def send_reports(
    config: ApplianceConfig, vrf: VrfConfig, reports: list[bytes]
) -> list[dict[str, Any]]:
    """Send ``reports`` through the running tunnel of ``vrf``; return the collector's answers."""
    tunnels = agent_status(await control.fetch_status(config.control_socket))["tunnels"]
    status = next((t for t in tunnels if t["vrf"] == vrf.name), None)
    if status is None:  # the config names a VRF the running agent did not start with
        raise ConnectError(
            f"the running agent has no tunnel for VRF {vrf.name}; restart it with this config"
        )
    if status["state"] != "up":
        raise ConnectError(
            f"the tunnel of VRF {vrf.name} is {status['state']}, not up: {status['last_error']}"
        )
    name = vrf.server_name or yarl.URL(status["server"] or "").host
    where = f"{config.qoe_address}:{config.qoe_port}"
    try:
        reader, writer = await asyncio.wait_for(connect(config, vrf, name), TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise UnreachableError(f"cannot reach the QoE collector at {where}: {exc}") from None
    answers = []
    try:
        for report in reports:
            writer.write(report + b"\n")
            line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if not line:
                raise UnreachableError(f"the QoE collector at {where} closed the connection")
            answers.append(json.loads(line))
    except (OSError, TimeoutError) as exc:
        raise UnreachableError(f"sending to the QoE collector at {where} failed: {exc}") from None
    finally:
        writer.close()
    return answers


async def connect(
    config: ApplianceConfig, vrf: VrfConfig, name: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TLS to the collector from inside the VRF (its socket made by the VRF's backend)."""
    address = (config.qoe_address, config.qoe_port)
    factory = vrf_backend(vrf.backend, vrf.netns, vrf.device).socket_factory()
    if factory is None:
        return await asyncio.open_connection(*address, ssl=client_tls(vrf), server_hostname=name)
    sock = factory((socket.AF_INET, socket.SOCK_STREAM, 0, "", address))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return await asyncio.open_connection(sock=sock, ssl=client_tls(vrf), server_hostname=name)
