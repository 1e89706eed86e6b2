"""The device registry: which device ids may open tunnels, and with which password.

Kept in SQLite next to the leases (``devices.sqlite``). The server reads it on
every handshake, so ``overlay device add`` takes effect at once without a
restart; removing or unbinding a device also needs the running server (to close
its sessions), so the CLI asks the server through the control socket and only
edits the files itself when no server runs.

A device either has its own password (stored as a scrypt hash; it then
authenticates with its device id as the username) or uses the shared OVOC-style
credential of ``[auth]``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from overlay.exceptions import StoreError
from overlay.server.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    password_hash TEXT,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Enrollment:
    device: str
    password_hash: str | None  # None: the shared credential applies
    created: float


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path, "device registry", SCHEMA)

    def get(self, device: str) -> Enrollment | None:
        row = self._query("SELECT id, password_hash, created FROM devices WHERE id = ?", device)
        return Enrollment(*row[0]) if row else None

    def add(self, device: str, password_hash: str | None) -> Enrollment:
        """Enroll ``device``; enrolling it again replaces its password."""
        enrollment = Enrollment(device, password_hash, time.time())
        self._query(
            "INSERT INTO devices (id, password_hash, created) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash",
            device,
            password_hash,
            enrollment.created,
        )
        return enrollment

    def remove(self, device: str) -> bool:
        return self._execute("DELETE FROM devices WHERE id = ?", device) > 0

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM devices").fetchone()[0])

    def all(self) -> list[Enrollment]:
        rows = self._query("SELECT id, password_hash, created FROM devices ORDER BY id")
        return [Enrollment(*row) for row in rows]

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, *args: object) -> list[tuple[str, str | None, float]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"device registry {self.path}: {exc}") from None

    def _execute(self, sql: str, *args: object) -> int:
        try:
            return self._db.execute(sql, args).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"device registry {self.path}: {exc}") from None
