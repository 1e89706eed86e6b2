"""What the workers of one server tell each other, through their supervisor.

Each worker connects to the supervisor's relay socket (``state/relay.sock``)
and sends it lines; the supervisor passes each line to every other worker.
Two kinds:

- ``["failed", source]``: a failed login from ``source``. Every worker counts
  it, so that ``auth.max_failures`` locks a guesser out after that many
  guesses in all, not that many per worker (the kernel spreads a guesser's
  connections over the workers).
- ``["tunnel", device, vrf, node, since]``: a tunnel a worker opened, on the
  SQLite store (PostgreSQL's workers hear of each other's tunnels as the nodes
  of a fleet do, :mod:`overlay.server.fleet`). The worker holding an older
  tunnel of that (device, VRF) closes it with 4001
  (:meth:`Node.newer_elsewhere`).

Unbind and remove need no relay: the supervisor sends them to every worker.
A worker whose relay connection breaks connects again after a second; what
it missed meanwhile leaves an old tunnel to its keepalive, and a guesser a
few more guesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from overlay.server.fleet import Newer, Tunnel

Failed = Callable[[str], None]  # a failed login from this source, on another worker

log = structlog.get_logger("overlay.server")

MAX_LINE = 4096  # bytes: a device id and a VRF name are far shorter
CHUNK = 1 << 16  # bytes the hub reads at once
MAX_BACKLOG = 1 << 20  # bytes a worker that stopped reading may owe before lines to it drop
RECONNECT = 1.0  # seconds


class Relay:
    """A worker's end: sends what happens here, hears what happens on the others."""

    def __init__(self, path: Path, node: str, newer: Newer, failed: Failed) -> None:
        self.path, self.node, self.newer, self.failed_elsewhere = path, node, newer, failed
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._lines: list[str] = []  # this turn's

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def claim(self, tunnel: Tunnel) -> None:
        self._tell(["tunnel", tunnel.device, tunnel.vrf, self.node, tunnel.since])

    def drop(self, tunnel: Tunnel) -> None:
        """Nothing to tell: a tunnel that ended replaces no other."""

    def failed(self, source: str) -> None:
        self._tell(["failed", source])

    def _tell(self, line: list[object]) -> None:
        """Send ``line`` with the others of this turn of the event loop: one write."""
        if self._writer is None:
            return
        if not self._lines:
            asyncio.get_running_loop().call_soon(self._send)
        self._lines.append(json.dumps(line))

    def _send(self) -> None:
        lines, self._lines = self._lines, []
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(("\n".join(lines) + "\n").encode())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
                reader, self._writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)
                while line := await reader.readline():
                    self._heard(line)
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            await asyncio.sleep(RECONNECT)

    def _heard(self, line: bytes) -> None:
        try:
            kind, *fields = json.loads(line)
            if kind == "tunnel":
                device, vrf, node, since = fields
                self.newer(str(device), str(vrf), str(node), float(since))
            elif kind == "failed":
                (source,) = fields
                self.failed_elsewhere(str(source))
            else:
                raise ValueError(kind)
        except (ValueError, TypeError):
            log.warning("a malformed line on the workers' relay", line=line[:100])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()


class Hub:
    """The supervisor's end: every line a worker sends goes to every other worker."""

    def __init__(self) -> None:
        self._workers: set[asyncio.StreamWriter] = set()
        self.dropped = 0  # lines not passed to a worker that stopped reading

    async def start(self, path: Path) -> asyncio.Server:
        """Listen at ``path``, which only the server's user may use: a line there closes a
        tunnel."""
        path.unlink(missing_ok=True)  # left by a supervisor that was killed
        old_umask = os.umask(0o177)
        try:
            return await asyncio.start_unix_server(self._serve, path, limit=MAX_LINE)
        finally:
            os.umask(old_umask)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._workers.add(writer)
        rest = b""  # a line not whole yet
        try:
            with contextlib.suppress(OSError):
                while chunk := await reader.read(CHUNK):  # a storm's claims pass on in a
                    lines, newline, rest = (rest + chunk).rpartition(b"\n")  # few writes
                    if newline:
                        self._pass(lines + newline, writer)
                    if len(rest) > MAX_LINE:
                        log.warning("a line too long on the workers' relay; its sender is cut off")
                        break
        finally:
            self._workers.discard(writer)
            writer.close()

    def _pass(self, lines: bytes, sender: asyncio.StreamWriter) -> None:
        for worker in self._workers:
            if worker is sender or worker.is_closing():
                continue
            if worker.transport.get_write_buffer_size() > MAX_BACKLOG:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "a worker does not read the relay; claims to it dropped",
                        dropped=self.dropped,
                    )
                continue
            worker.write(lines)
