"""The device registry: which device ids may open tunnels, and with which password.

Kept in SQLite next to the leases (``devices.sqlite``). The server reads it on
every handshake, so ``overlay device add`` takes effect at once without a
restart; removing or unbinding a device also needs the running server (to close
its sessions), so the CLI asks the server through the control socket and only
edits the files itself when no server runs.

A device either has its own password (stored as a scrypt hash; it then
authenticates with its device id as the username) or uses the shared OVOC-style
credential of ``[auth]``. A device enrolled with ``client_cert`` must also
present a certificate from ``auth.client_ca_file`` that names it (mutual TLS).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.exceptions import StoreError
from overlay.server.sqlite import GroupCommit, Migration, connect


def _create_devices(db: sqlite3.Connection) -> None:
    """Version 1: the devices table, with the client certificate flag. A registry written
    before schema versions may have the table without the flag: it gets it, every row kept."""
    db.execute(
        """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    password_hash TEXT,
    created REAL NOT NULL,
    client_cert INTEGER NOT NULL DEFAULT 0
)
"""
    )
    columns = {row[1] for row in db.execute("PRAGMA table_info(devices)")}
    if "client_cert" not in columns:
        db.execute("ALTER TABLE devices ADD COLUMN client_cert INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: list[Migration] = [
    _create_devices,
    # version 2: how many VRFs (leases) the device may hold; NULL: auth.max_vrfs
    "ALTER TABLE devices ADD COLUMN max_vrfs INTEGER",
]
COLUMNS = "id, password_hash, created, client_cert, max_vrfs"
UPSERT = (
    "INSERT INTO devices (id, password_hash, created, client_cert, max_vrfs) "
    "VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash, "
    "client_cert = excluded.client_cert, max_vrfs = excluded.max_vrfs"
)


@dataclass(frozen=True)
class Enrollment:
    device: str
    password_hash: str | None  # None: the shared credential applies
    created: float
    client_cert: bool = False  # must present a client certificate naming it
    max_vrfs: int | None = None  # None: the server's auth.max_vrfs


def enrollment_of(row: Sequence[Any]) -> Enrollment:
    """An enrolment from a row of ``COLUMNS`` (SQLite's or PostgreSQL's)."""
    return Enrollment(row[0], row[1], row[2], bool(row[3]), row[4])


class Registry:
    def __init__(self, path: Path, batch: GroupCommit | None = None) -> None:
        self.path = path
        self.batch = batch  # None: every enrolment is committed at once
        self._db = connect(path, "device registry", MIGRATIONS)

    def get(self, device: str) -> Enrollment | None:
        row = self._query(f"SELECT {COLUMNS} FROM devices WHERE id = ?", device)
        return enrollment_of(row[0]) if row else None

    def add(
        self,
        device: str,
        password_hash: str | None,
        client_cert: bool = False,
        max_vrfs: int | None = None,
    ) -> Enrollment:
        """Enroll ``device``; enrolling it again replaces its password, certificate need
        and VRF limit.

        With a :class:`GroupCommit`, the enrolment is durable once its ``wait()`` returns.
        """
        enrollment = Enrollment(device, password_hash, time.time(), client_cert, max_vrfs)
        row = (device, password_hash, enrollment.created, int(client_cert), max_vrfs)
        if self.batch is None:
            self._execute(UPSERT, *row)
        else:
            self.batch.later(self._db, lambda: self._execute(UPSERT, *row))
        return enrollment

    def remove(self, device: str) -> bool:
        if self.batch is not None:
            self.batch.flush()
        return self._execute("DELETE FROM devices WHERE id = ?", device) > 0

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM devices").fetchone()[0])

    def all(self) -> list[Enrollment]:
        rows = self._query(f"SELECT {COLUMNS} FROM devices ORDER BY id")
        return [enrollment_of(row) for row in rows]

    def close(self) -> None:
        self._db.close()

    def _query(
        self, sql: str, *args: object
    ) -> list[tuple[str, str | None, float, int, int | None]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"device registry {self.path}: {exc}") from None

    def _execute(self, sql: str, *args: object) -> int:
        try:
            return self._db.execute(sql, args).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"device registry {self.path}: {exc}") from None
