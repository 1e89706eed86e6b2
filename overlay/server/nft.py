"""The node's nftables table for the LAN (:mod:`overlay.server.lan`), loaded with ``nft -f``.

The node owns one table, ``ip overlay_lan``: it replaces it at start (so a
killed run's table goes) and deletes it at stop. ``nft`` applies a file as one
transaction, so the table is never half there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from pathlib import Path

import structlog
from pyroute2 import IPRoute

from overlay.exceptions import ConfigError
from overlay.server import lan as lanmap

log = structlog.get_logger("overlay.server")
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")  # this network namespace's


class NftError(ConfigError):
    """nft is missing or refused the table; the message says what to do."""


async def run_nft(text: str) -> None:
    """Apply ``text`` with ``nft -f -``; NftError with nft's first line of complaint."""
    nft = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if Path(p).exists()), None
    )
    if nft is None:
        raise NftError("[lan] and [[service]] need nftables: apt install nftables")
    process = await asyncio.create_subprocess_exec(
        nft,
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, error = await process.communicate(text.encode())
    if process.returncode != 0:
        first = (error.decode(errors="replace").strip().splitlines() or ["no message"])[0]
        raise NftError(f"nft refused the LAN table {lanmap.TABLE}: {first}")


def check_host(lan: lanmap.Lan) -> None:
    """Refuse what makes [lan] fail on this host: forwarding off, a prefix on a link here."""
    if FORWARDING.read_text().strip() != "1":
        raise NftError(
            "[lan] needs IPv4 forwarding between the LAN and the TUN: "
            "sysctl -w net.ipv4.ip_forward=1 (and keep it in /etc/sysctl.d)"
        )
    if lan.prefix is None:
        return
    with IPRoute() as ipr:
        for entry in ipr.get_addr(family=2):
            address = ipaddress.IPv4Interface(
                f"{entry.get_attr('IFA_ADDRESS')}/{entry['prefixlen']}"
            )
            if address.network.overlaps(lan.prefix):
                raise NftError(
                    f"lan.prefix {lan.prefix} overlaps {address} on {entry.get_attr('IFA_LABEL')}"
                    ", a network of this host: choose a prefix nobody uses"
                )


async def install(lan: lanmap.Lan, tun: str, server: ipaddress.IPv4Address) -> None:
    """Check the host and load the node's table."""
    await asyncio.to_thread(check_host, lan)
    await run_nft(lanmap.ruleset(lan, tun, server))
    log.info(
        "LAN translation installed",
        table=lanmap.TABLE,
        prefix=str(lan.prefix) if lan.prefix else None,
        services=[s.describe() for s in lan.services],
    )


async def remove() -> None:
    """Delete the node's table; a failure is logged, never raised (we are stopping)."""
    try:
        await run_nft(lanmap.removal())
    except NftError as exc:
        log.error("cannot remove the LAN table", error=str(exc))
