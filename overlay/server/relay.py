"""The one-live-tunnel rule between the workers of one server, without a database server.

Workers that share the SQLite store (``listen.workers`` without ``[store]
url``) have no LISTEN/NOTIFY to tell each other of a new tunnel, so their
supervisor relays it: each worker sends every tunnel it opens, as a line
``[device, vrf, node, since]``, to the supervisor's relay socket
(``state/relay.sock``); the supervisor passes the line to every other worker,
and the one holding an older tunnel of that (device, VRF) closes it with 4001
(:meth:`Node.newer_elsewhere`), as a node does for a newer tunnel elsewhere
in a fleet.

Unbind and remove need no relay: the supervisor sends them to every worker.
A worker whose relay connection breaks connects again after a second; the
claims it missed meanwhile only leave an old tunnel to its keepalive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import structlog

from overlay.server.fleet import Newer, Tunnel

log = structlog.get_logger("overlay.server")

MAX_LINE = 4096  # bytes: a device id and a VRF name are far shorter
CHUNK = 1 << 16  # bytes the hub reads at once
MAX_BACKLOG = 1 << 20  # bytes a worker that stopped reading may owe before lines to it drop
RECONNECT = 1.0  # seconds


class Relay:
    """A worker's end: sends its claims, hears the others'."""

    def __init__(self, path: Path, node: str, newer: Newer) -> None:
        self.path, self.node, self.newer = path, node, newer
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._claims: list[str] = []  # this turn's lines

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def claim(self, tunnel: Tunnel) -> None:
        """Tell the others, with the claims of this turn of the event loop: one write."""
        if self._writer is None:
            return
        if not self._claims:
            asyncio.get_running_loop().call_soon(self._send)
        self._claims.append(json.dumps([tunnel.device, tunnel.vrf, self.node, tunnel.since]))

    def _send(self) -> None:
        claims, self._claims = self._claims, []
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(("\n".join(claims) + "\n").encode())

    def drop(self, tunnel: Tunnel) -> None:
        """Nothing to tell: a tunnel that ended replaces no other."""

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
            device, vrf, node, since = json.loads(line)
            self.newer(str(device), str(vrf), str(node), float(since))
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
