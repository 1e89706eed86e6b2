"""Commands run when a tunnel comes up and when it goes down, as OpenVPN's ``--up`` and
wg-quick's PostUp: so that snmpd, a firewall or a route can follow the leased address.

A hook gets what it needs in its environment (``OVERLAY_EVENT``, ``OVERLAY_DEVICE``,
``OVERLAY_VRF``, ``OVERLAY_ADDRESS``, ``OVERLAY_PREFIX``, ``OVERLAY_TUN``,
``OVERLAY_NETNS``, ``OVERLAY_SERVER``), runs without a shell, and may take at most
``hooks.timeout`` seconds. Its outcome is logged; a failing hook never stops a tunnel.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import structlog

log = structlog.get_logger("appliance.hooks")


@dataclass(frozen=True)
class Hooks:
    up: tuple[str, ...]  # argv; empty: none
    down: tuple[str, ...]
    timeout: float


async def run(argv: tuple[str, ...], environment: dict[str, str], timeout: float) -> int | None:
    """Run one hook to its end (killed past ``timeout``); its exit code, None if it did not
    run or was killed."""
    if not argv:
        return None
    event = environment.get("OVERLAY_EVENT", "")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=os.environ | environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        log.error("hook did not run", hook=event, command=argv[0], error=exc.strerror)
        return None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        log.error("hook killed", hook=event, command=argv[0], timeout=timeout)
        return None
    text = output.decode(errors="replace").strip()[-500:]
    if process.returncode:
        log.error("hook failed", hook=event, command=argv[0], code=process.returncode, output=text)
    else:
        log.info("hook done", hook=event, command=argv[0], output=text or None)
    return process.returncode
