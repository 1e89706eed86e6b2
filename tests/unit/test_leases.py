import asyncio
import ipaddress
import sqlite3

import pytest

from overlay.addressing import AddressPool
from overlay.exceptions import PoolExhaustedError, StoreError
from overlay.server.leases import LeaseStore
from overlay.server.registry import Registry
from overlay.server.sqlite import GroupCommit

POOL = AddressPool.parse("169.254.1.0/24")


def test_leases_are_sticky_per_device_and_vrf(tmp_path):
    store = LeaseStore(tmp_path / "leases.sqlite", POOL)
    a = store.lease("SN-1", "main-vrf")
    b = store.lease("SN-2", "main-vrf")
    c = store.lease("SN-1", "voice")
    assert len({a.address, b.address, c.address}) == 3
    assert store.lease("SN-1", "main-vrf") == a


def test_leases_survive_a_restart(tmp_path):
    path = tmp_path / "leases.sqlite"
    store = LeaseStore(path, POOL)
    first = [store.lease(f"SN-{n}", "default").address for n in range(10)]
    store.close()
    reopened = LeaseStore(path, POOL)
    assert [reopened.lease(f"SN-{n}", "default").address for n in range(10)] == first
    assert reopened.lease("SN-new", "default").address == ipaddress.IPv4Address("169.254.1.11")


def test_exhausted_pool_keeps_existing_leases(tmp_path):
    store = LeaseStore(tmp_path / "leases.sqlite", AddressPool.parse("169.254.1.1-169.254.1.1"))
    kept = store.lease("SN-1", "default")
    with pytest.raises(PoolExhaustedError):
        store.lease("SN-2", "default")
    assert store.lease("SN-1", "default") == kept
    assert len(store.table) == 1


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "leases.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open lease store"):
        LeaseStore(path, POOL)
    assert path.read_bytes() == b"this is not sqlite" * 100  # left as it was


def test_leases_are_committed_at_once(tmp_path):
    path = tmp_path / "leases.sqlite"
    store = LeaseStore(path, POOL)
    store.lease("SN-1", "default")
    rows = sqlite3.connect(path).execute("SELECT device, address FROM leases").fetchall()
    assert rows == [("SN-1", "169.254.1.1")]


async def test_a_group_commit_makes_one_turns_writes_durable_together(tmp_path):
    commits = GroupCommit()
    store = LeaseStore(tmp_path / "leases.sqlite", POOL, commits)
    registry = Registry(tmp_path / "devices.sqlite", commits)
    registry.add("SN-1", None)
    leases = [store.lease(f"SN-{n}", "default") for n in range(3)]
    reader = sqlite3.connect(tmp_path / "leases.sqlite")
    assert reader.execute("SELECT count(*) FROM leases").fetchone() == (0,)  # not yet
    await commits.wait()
    rows = reader.execute("SELECT address FROM leases ORDER BY address").fetchall()
    assert rows == [(str(lease.address),) for lease in leases]
    enrolled = sqlite3.connect(tmp_path / "devices.sqlite").execute("SELECT id FROM devices")
    assert enrolled.fetchall() == [("SN-1",)]
    await commits.wait()  # nothing pending: returns at once


async def test_writes_of_later_turns_join_the_open_window(tmp_path):
    commits = GroupCommit(window=0.05)
    store = LeaseStore(tmp_path / "leases.sqlite", POOL, commits)
    reader = sqlite3.connect(tmp_path / "leases.sqlite")
    store.lease("SN-1", "default")
    await asyncio.sleep(0.01)  # a few turns of the event loop later, within the window
    store.lease("SN-2", "default")
    assert reader.execute("SELECT count(*) FROM leases").fetchone() == (0,)
    await commits.wait()
    assert reader.execute("SELECT count(*) FROM leases").fetchone() == (2,)


async def test_a_failed_group_commit_takes_the_leases_back(tmp_path):
    commits = GroupCommit()
    store = LeaseStore(tmp_path / "leases.sqlite", POOL, commits)
    kept = store.lease("SN-1", "default")
    await commits.wait()
    # A deferred foreign key that every new lease breaks makes the next COMMIT fail.
    store._db.executescript(
        """
        PRAGMA foreign_keys = ON;
        CREATE TABLE parent (id INTEGER PRIMARY KEY);
        CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TRIGGER orphan AFTER INSERT ON leases BEGIN INSERT INTO child VALUES (42); END;
        """
    )
    store.lease("SN-2", "default")
    with pytest.raises(StoreError, match="cannot commit"):
        await commits.wait()
    assert [lease.device for lease in store.table.all()] == ["SN-1"]
    reader = sqlite3.connect(tmp_path / "leases.sqlite")
    assert reader.execute("SELECT device, address FROM leases").fetchall() == [
        (kept.device, str(kept.address))
    ]
    reader.close()
    store._db.execute("DROP TRIGGER orphan")
    again = store.lease("SN-3", "default")
    await commits.wait()
    assert again.address == ipaddress.IPv4Address("169.254.1.2")  # the address was freed
