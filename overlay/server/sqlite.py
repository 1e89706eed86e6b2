"""Opening the server's SQLite stores (leases, registry, QoE reports) the same way.

WAL lets ``overlay`` commands read while the server writes; a busy timeout lets
a command that writes (``overlay device add``) wait for the server's commit
rather than fail; full sync makes every commit survive a crash.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from overlay.exceptions import StoreError


def connect(path: Path, what: str, schema: str) -> sqlite3.Connection:
    """Open (creating if need be) the store at ``path``; ``what`` names it in errors."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(schema)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} {path}: {exc}") from None
    return db


def connect_readonly(path: Path, what: str) -> sqlite3.Connection:
    """Open the store at ``path`` for reading only: a running server may hold it."""
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} {path}: {exc}") from None
