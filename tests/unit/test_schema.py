"""Schema versions of the SQLite stores: migrations, old files kept, newer files refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from overlay.addressing import AddressPool
from overlay.exceptions import StoreError
from overlay.server.leases import LeaseStore
from overlay.server.qoe import ReportStore
from overlay.server.registry import Registry


def test_a_registry_from_before_versions_and_mutual_tls_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE devices (id TEXT PRIMARY KEY, password_hash TEXT, created REAL)")
    old.execute("INSERT INTO devices VALUES ('SN-1', NULL, 1.0)")
    old.commit()
    old.close()
    registry = Registry(path)
    enrolled = registry.get("SN-1")
    registry.close()
    assert enrolled is not None and not enrolled.client_cert
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (2,)


@pytest.mark.parametrize(
    ("name", "open_store"),
    [
        ("devices.sqlite", Registry),
        ("leases.sqlite", lambda path: LeaseStore(path, AddressPool.parse("169.254.1.0/24"))),
        ("qoe.sqlite", ReportStore),
    ],
)
def test_a_store_from_a_newer_overlay_is_refused_untouched(
    tmp_path: Path, name: str, open_store: object
) -> None:
    path = tmp_path / name
    newer = sqlite3.connect(path)
    newer.execute("PRAGMA user_version = 99")
    newer.execute("CREATE TABLE future (x)")
    newer.commit()
    newer.close()
    before = path.read_bytes()
    assert callable(open_store)
    with pytest.raises(StoreError, match="schema version 99, newer than this overlay knows"):
        open_store(path)
    assert path.read_bytes() == before


def test_new_stores_start_at_the_newest_version(tmp_path: Path) -> None:
    ReportStore(tmp_path / "qoe.sqlite").close()
    version = sqlite3.connect(tmp_path / "qoe.sqlite").execute("PRAGMA user_version").fetchone()
    assert version == (1,)
