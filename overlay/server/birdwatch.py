"""Whether BIRD runs: a node whose routes nobody announces says so, loudly and once.

With ``[bgp]``, the node's tunnels reach the management network only through
BIRD. If BIRD is not running, the tunnels keep working but nobody outside
the node can reach the devices. The node then logs an error once (and once
more when BIRD is back), and exports ``overlay_bgp_daemon_up`` 0. The check
connects to BIRD's control socket every ``INTERVAL`` seconds and reads its
greeting (``0001 BIRD 2.0.12 ready.``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

log = structlog.get_logger("overlay.server")

INTERVAL = 5.0  # seconds between two looks at BIRD
GREETING = b"0001 "


async def bird_answers(socket: Path, timeout: float = 2.0) -> bool:
    """Whether a BIRD answers on ``socket`` with its greeting."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(socket))
            try:
                return (await reader.readline()).startswith(GREETING)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False


class BirdWatch:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.up: bool | None = None  # None: not looked yet

    async def run(self) -> None:
        while True:
            self.saw(await bird_answers(self.socket))
            await asyncio.sleep(INTERVAL)

    def saw(self, up: bool) -> None:
        """Log each change once."""
        if up == self.up:
            return
        self.up = up
        if up:
            log.info("BIRD answers: this node's tunnels are announced", socket=str(self.socket))
        else:
            log.error(
                "BIRD does not answer: this node's tunnels are NOT announced to the management "
                "network (start bird, or check bgp.bird_socket)",
                socket=str(self.socket),
            )
