"""The QoE collector: devices send voice-quality reports to 169.254.0.1:5001 over the overlay.

A device opens TLS over TCP to the server's overlay address and writes one JSON
object per line; the collector answers each line with one JSON line,
``{"stored": ID}`` or ``{"error": "…"}``. The device's identity comes from the
overlay itself: the source address of the connection is a lease, so the report
is stored with the device id and VRF the server gave that address. A source
that holds no lease is refused.

What one device may cost is bounded: a report is at most ``MAX_REPORT`` bytes,
a device may store ``qoe.rate`` reports a second (``qoe.burst`` at once;
beyond, ``over-quota``), reports older than ``qoe.retention_days`` and past
the newest ``qoe.max_reports`` are pruned every ``PRUNE_EVERY`` seconds. The
reports are kept in their own SQLite file, written by a thread of its own in
batches (:class:`ReportWriter`): the event loop never waits for their disk, and
a QoE store that cannot write (a full disk) fails reports, not leases. A line
is answered ``stored`` only once committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from overlay.exceptions import StoreError
from overlay.server.budget import TokenBucket
from overlay.server.sqlite import connect, connect_readonly

MAX_REPORT = 65536
COMMIT_WINDOW = 0.02  # seconds the first report of a batch waits for others
PRUNE_EVERY = 3600.0
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
    """QoE reports in SQLite; a writable store is used by one thread only."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self._db = connect_readonly(path, "QoE store")
        else:
            self._db = connect(path, "QoE store", MIGRATIONS)

    def add_many(self, rows: list[tuple[float, str, str, str, str]]) -> list[int]:
        """Store (received, device, vrf, address, report JSON) rows in one transaction;
        return their ids. Raises StoreError, and keeps none of them, when that fails."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            ids = [
                int(
                    self._db.execute(
                        "INSERT INTO reports (received, device, vrf, address, report) "
                        "VALUES (?, ?, ?, ?, ?)",
                        row,
                    ).lastrowid
                    or 0
                )
                for row in rows
            ]
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise StoreError(f"cannot store QoE reports in {self.path}: {exc}") from None
        return ids

    def prune(self, before: float, keep: int) -> int:
        """Delete reports received before ``before`` and all but the newest ``keep``."""
        try:
            deleted = self._db.execute("DELETE FROM reports WHERE received < ?", (before,))
            count = deleted.rowcount
            deleted = self._db.execute(
                "DELETE FROM reports WHERE id <= (SELECT id FROM reports ORDER BY id DESC "
                "LIMIT 1 OFFSET ?)",
                (keep,),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prune QoE store {self.path}: {exc}") from None
        return int(count + deleted.rowcount)

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


# (device, VRF) of a lease's address; it may ask the store (a lease another worker made)
Owner = Callable[[ipaddress.IPv4Address], Awaitable[tuple[str, str] | None]]
Row = tuple[float, str, str, str, str]


@dataclass(frozen=True)
class Quota:
    """What one device may store (``[qoe]`` in server.toml)."""

    rate: float = 5.0  # reports a second, sustained
    burst: float = 100.0  # reports at once
    retention_days: float = 30.0
    max_reports: int = 200_000  # all devices together


class ReportWriter:
    """Writes reports in batches from a thread of its own, off the event loop."""

    def __init__(self, path: Path, window: float = COMMIT_WINDOW) -> None:
        self.path = path
        self.window = window
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="qoe-store")
        self._store: ReportStore | None = None
        self._pending: list[tuple[Row, asyncio.Future[int]]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._thread, ReportStore, self.path)

    async def store(self, device: str, vrf: str, address: str, report: dict[str, Any]) -> int:
        """Store a report; return its id once it is committed (StoreError if it is not)."""
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[int] = loop.create_future()
        row = (time.time(), device, vrf, address, json.dumps(report, separators=(",", ":")))
        self._pending.append((row, stored))
        if self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await stored

    def _flush(self) -> None:
        self._timer = None
        batch, self._pending = self._pending, []
        assert self._store is not None
        writing = asyncio.get_running_loop().run_in_executor(
            self._thread, self._store.add_many, [row for row, _ in batch]
        )

        def answer(done: asyncio.Future[list[int]]) -> None:
            error = done.exception()
            for index, (_, stored) in enumerate(batch):
                if stored.done():
                    continue
                if error is not None:
                    stored.set_exception(error)
                else:
                    stored.set_result(done.result()[index])

        writing.add_done_callback(answer)

    async def prune(self, quota: Quota) -> int:
        """Apply the retention; return how many reports went."""
        assert self._store is not None
        before = time.time() - quota.retention_days * 86400
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._store.prune, before, quota.max_reports
        )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._flush()
        store = self._store
        if store is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, store.close)
        self._thread.shutdown(wait=True)


class Collector:
    """Accepts report connections and stores what they send, within each device's quota."""

    def __init__(self, writer: ReportWriter, owner: Owner, quota: Quota = Quota()) -> None:
        self.writer = writer
        self.owner = owner
        self.quota = quota
        self.counters: Counter[str] = Counter()
        self._quotas: dict[tuple[str, str], TokenBucket] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            source = ipaddress.IPv4Address(peer[0])
            owner = await self.owner(source)
            if owner is None:
                self.counters["unknown-source"] += 1
                log.warning("qoe report from an address without a lease", source=str(source))
                return
            quota = self._quotas.setdefault(
                owner, TokenBucket(self.quota.rate, self.quota.burst, time.monotonic())
            )
            device, vrf = owner
            while line := await reader.readline():
                answer = await self._take(line, quota, device, vrf, str(source))
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.counters["failed"] += 1
        finally:
            writer.close()

    async def _take(
        self, line: bytes, quota: TokenBucket, device: str, vrf: str, address: str
    ) -> dict[str, Any]:
        """One line: its answer, counted by result."""
        try:
            report = parse_report(line)
        except ReportError as exc:
            self.counters["rejected"] += 1
            return {"error": str(exc)}
        if not quota.spend(1, time.monotonic()):
            self.counters["over-quota"] += 1
            return {"error": f"over quota: {self.quota.rate:g} reports a second; try later"}
        try:
            stored = await self.writer.store(device, vrf, address, report)
        except StoreError as exc:
            self.counters["store-error"] += 1
            log.error("cannot store a qoe report", device=device, vrf=vrf, error=str(exc))
            return {"error": "the server cannot store reports now"}
        self.counters["stored"] += 1
        return {"stored": stored}

    async def prune(self, every: float = PRUNE_EVERY) -> None:
        """Apply the retention now and every ``every`` seconds, until cancelled; forget the
        quotas of devices that have not sent for long (their buckets are full again)."""
        while True:
            try:
                pruned = await self.writer.prune(self.quota)
            except StoreError as exc:
                log.error("cannot prune the qoe store", error=str(exc))
            else:
                if pruned:
                    log.info("qoe reports pruned", reports=pruned)
            now = time.monotonic()
            for key, bucket in list(self._quotas.items()):
                if bucket.spend(0, now) and bucket.tokens >= bucket.burst:
                    del self._quotas[key]
            await asyncio.sleep(every)
