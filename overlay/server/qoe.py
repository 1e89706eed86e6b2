"""The QoE collector: devices send voice-quality reports to 169.254.0.1:5001 over the overlay.

A device opens TLS over TCP to the server's overlay address and writes one JSON
object per line; the collector answers each line with one JSON line,
``{"stored": ID}`` or ``{"error": "…"}``. The device's identity comes from the
overlay itself: the source address of the connection is a lease, so the report
is stored with the device id and VRF the server gave that address. A source
that holds no lease is refused. Reports are kept in SQLite next to the leases,
in a file of their own with a group commit of its own: the lines of a short
window share one full-sync commit, off the handshakes' commits, so that a QoE
store that cannot write never fails a lease. A line is answered ``stored``
only once committed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from overlay.exceptions import StoreError
from overlay.server.sqlite import GroupCommit, connect, connect_readonly

MAX_REPORT = 65536
MIGRATIONS = [  # a store written before schema versions has version 0 and the table already
    """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    device TEXT NOT NULL,
    vrf TEXT NOT NULL,
    address TEXT NOT NULL,
    report TEXT NOT NULL
)
"""
]

log = structlog.get_logger("overlay.qoe")


class ReportError(ValueError):
    """A line that is not one JSON object."""


def parse_report(line: bytes) -> dict[str, Any]:
    """Parse one report line; raise :class:`ReportError` saying what is wrong."""
    if len(line) > MAX_REPORT:
        raise ReportError(f"report longer than {MAX_REPORT} bytes")
    try:
        report = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise ReportError("a report must be a JSON object")
    return report


@dataclass(frozen=True)
class Report:
    id: int
    received: float
    device: str
    vrf: str
    address: str
    report: dict[str, Any]


class ReportStore:
    """QoE reports in SQLite."""

    def __init__(
        self, path: Path, readonly: bool = False, batch: GroupCommit | None = None
    ) -> None:
        self.path = path
        self.batch = batch  # None: every report is committed at once
        if readonly:
            self._db = connect_readonly(path, "QoE store")
        else:
            self._db = connect(path, "QoE store", MIGRATIONS)

    def add(self, device: str, vrf: str, address: str, report: dict[str, Any]) -> int:
        """Store a report; with a group commit it is durable once ``batch.wait()`` returns."""
        if self.batch is not None:
            self.batch.begin(self._db)
        try:
            cursor = self._db.execute(
                "INSERT INTO reports (received, device, vrf, address, report) "
                "VALUES (?, ?, ?, ?, ?)",
                (time.time(), device, vrf, address, json.dumps(report, separators=(",", ":"))),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store a QoE report in {self.path}: {exc}") from None
        return int(cursor.lastrowid or 0)

    async def stored(self) -> None:
        """Return once what was added is committed; raise StoreError if the commit failed."""
        if self.batch is not None:
            await self.batch.wait()

    def list(self, device: str | None = None, limit: int = 100) -> list[Report]:
        query = "SELECT id, received, device, vrf, address, report FROM reports"
        args: tuple[Any, ...] = ()
        if device is not None:
            query += " WHERE device = ?"
            args = (device,)
        query += " ORDER BY id DESC LIMIT ?"
        try:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read QoE store {self.path}: {exc}") from None
        return [Report(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]

    def close(self) -> None:
        self._db.close()


Owner = Callable[[ipaddress.IPv4Address], tuple[str, str] | None]


class Collector:
    """Accepts report connections and stores what they send."""

    def __init__(self, store: ReportStore, owner: Owner) -> None:
        self.store = store
        self.owner = owner
        self.counters: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            source = ipaddress.IPv4Address(peer[0])
            owner = self.owner(source)
            if owner is None:
                self.counters["unknown-source"] += 1
                log.warning("qoe report from an address without a lease", source=str(source))
                return
            device, vrf = owner
            while line := await reader.readline():
                try:
                    report = parse_report(line)
                except ReportError as exc:
                    self.counters["rejected"] += 1
                    writer.write(json.dumps({"error": str(exc)}).encode() + b"\n")
                    continue
                try:
                    stored = self.store.add(device, vrf, str(source), report)
                    await self.store.stored()
                except StoreError as exc:
                    self.counters["store-error"] += 1
                    log.error("cannot store a qoe report", device=device, vrf=vrf, error=str(exc))
                    writer.write(b'{"error": "the server cannot store reports now"}\n')
                    await writer.drain()
                    return
                self.counters["stored"] += 1
                writer.write(json.dumps({"stored": stored}).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.counters["failed"] += 1
        finally:
            writer.close()
