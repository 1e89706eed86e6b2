import asyncio
import ipaddress
import sqlite3

import pytest

from overlay.addressing import AddressPool
from overlay.exceptions import PoolExhaustedError, StoreError, VrfLimitError
from overlay.server.leases import LeaseStore
from overlay.server.registry import Registry
from overlay.server.sqlite import GroupCommit

POOL = AddressPool.parse("169.254.1.0/24")


async def test_leases_are_sticky_per_device_and_vrf(tmp_path):
    store = LeaseStore(tmp_path / "leases.sqlite", POOL)
    a = await store.lease("SN-1", "main-vrf")
    b = await store.lease("SN-2", "main-vrf")
    c = await store.lease("SN-1", "voice")
    assert len({a.address, b.address, c.address}) == 3
    assert await store.lease("SN-1", "main-vrf") == a


async def test_leases_survive_a_restart(tmp_path):
    path = tmp_path / "leases.sqlite"
    store = LeaseStore(path, POOL)
    first = [(await store.lease(f"SN-{n}", "default")).address for n in range(10)]
    store.close()
    reopened = LeaseStore(path, POOL)
    assert [(await reopened.lease(f"SN-{n}", "default")).address for n in range(10)] == first
    new = await reopened.lease("SN-new", "default")
    assert new.address == ipaddress.IPv4Address("169.254.1.11")


async def test_exhausted_pool_keeps_existing_leases(tmp_path):
    store = LeaseStore(tmp_path / "leases.sqlite", AddressPool.parse("169.254.1.1-169.254.1.1"))
    kept = await store.lease("SN-1", "default")
    with pytest.raises(PoolExhaustedError):
        await store.lease("SN-2", "default")
    assert await store.lease("SN-1", "default") == kept
    assert len(store.table) == 1


async def test_after_a_wrap_the_next_search_starts_at_the_lease_just_made(tmp_path):
    """Not back at the top of the pool, to walk every taken address again each time."""
    store = LeaseStore(tmp_path / "leases.sqlite", AddressPool.parse("169.254.1.1-169.254.1.4"))
    for n in range(4):
        await store.lease(f"SN-{n}", "default")
    store.release("SN-0")
    store.release("SN-2")
    wrapped = await store.lease("SN-4", "default")
    assert wrapped.address == ipaddress.IPv4Address("169.254.1.1")
    assert store.table.last == wrapped.address
    assert (await store.lease("SN-5", "default")).address == ipaddress.IPv4Address("169.254.1.3")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "leases.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open lease store"):
        LeaseStore(path, POOL)
    assert path.read_bytes() == b"this is not sqlite" * 100  # left as it was


async def test_leases_are_committed_at_once(tmp_path):
    path = tmp_path / "leases.sqlite"
    store = LeaseStore(path, POOL)
    await store.lease("SN-1", "default")
    rows = sqlite3.connect(path).execute("SELECT device, address FROM leases").fetchall()
    assert rows == [("SN-1", "169.254.1.1")]


async def test_a_group_commit_makes_one_turns_writes_durable_together(tmp_path):
    commits = GroupCommit()
    store = LeaseStore(tmp_path / "leases.sqlite", POOL, commits)
    registry = Registry(tmp_path / "devices.sqlite", commits)
    registry.add("SN-1", None)
    asking = [asyncio.create_task(store.lease(f"SN-{n}", "default")) for n in range(3)]
    await asyncio.sleep(0)
    reader = sqlite3.connect(tmp_path / "leases.sqlite")
    assert reader.execute("SELECT count(*) FROM leases").fetchone() == (0,)  # not yet
    assert registry.get("SN-1") is None
    leases = await asyncio.gather(*asking)
    rows = reader.execute("SELECT address FROM leases ORDER BY address").fetchall()
    assert rows == [(str(lease.address),) for lease in leases]
    enrolled = sqlite3.connect(tmp_path / "devices.sqlite").execute("SELECT id FROM devices")
    assert enrolled.fetchall() == [("SN-1",)]
    await commits.wait()  # nothing pending: returns at once


async def test_writes_of_later_turns_join_the_open_window(tmp_path):
    commits = GroupCommit(window=0.05)
    store = LeaseStore(tmp_path / "leases.sqlite", POOL, commits)
    reader = sqlite3.connect(tmp_path / "leases.sqlite")
    first = asyncio.create_task(store.lease("SN-1", "default"))
    await asyncio.sleep(0.01)  # a few turns of the event loop later, within the window
    second = asyncio.create_task(store.lease("SN-2", "default"))
    await asyncio.sleep(0)
    assert reader.execute("SELECT count(*) FROM leases").fetchone() == (0,)
    await asyncio.gather(first, second)
    assert reader.execute("SELECT count(*) FROM leases").fetchone() == (2,)


async def test_the_write_lock_is_free_while_the_window_is_open(tmp_path):
    """Workers share the file: one waiting for the lock would wait with its loop stopped."""
    commits = GroupCommit(window=0.05)
    store = LeaseStore(tmp_path / "leases.sqlite", POOL, commits)
    asking = asyncio.create_task(store.lease("SN-1", "default"))
    await asyncio.sleep(0.01)
    other = sqlite3.connect(tmp_path / "leases.sqlite", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # would raise "database is locked"
    other.execute("ROLLBACK")
    await asking


async def test_a_failed_group_commit_takes_the_leases_back(tmp_path):
    commits = GroupCommit()
    store = LeaseStore(tmp_path / "leases.sqlite", POOL, commits)
    kept = await store.lease("SN-1", "default")
    # A deferred foreign key that every new lease breaks makes the next COMMIT fail.
    store._db.executescript(
        """
        PRAGMA foreign_keys = ON;
        CREATE TABLE parent (id INTEGER PRIMARY KEY);
        CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TRIGGER orphan AFTER INSERT ON leases BEGIN INSERT INTO child VALUES (42); END;
        """
    )
    with pytest.raises(StoreError, match="cannot commit"):
        await store.lease("SN-2", "default")
    assert [lease.device for lease in store.table.all()] == ["SN-1"]
    reader = sqlite3.connect(tmp_path / "leases.sqlite")
    assert reader.execute("SELECT device, address FROM leases").fetchall() == [
        (kept.device, str(kept.address))
    ]
    reader.close()
    store._db.execute("DROP TRIGGER orphan")
    again = await store.lease("SN-3", "default")
    assert again.address == ipaddress.IPv4Address("169.254.1.2")  # the address was freed


async def test_workers_sharing_the_file_hand_out_each_address_once(tmp_path):
    path = tmp_path / "leases.sqlite"
    one, two = LeaseStore(path, POOL, GroupCommit()), LeaseStore(path, POOL, GroupCommit())
    first = await asyncio.gather(*(one.lease(f"SN-{n}", "default") for n in range(3)))
    second = await asyncio.gather(*(two.lease(f"SN-{n}", "default") for n in range(2, 5)))
    assert second[0] == first[2]  # the lease the other worker made
    addresses = [lease.address for lease in first + second[1:]]
    assert len(set(addresses)) == 5
    assert await one.lease("SN-4", "default") == second[2]  # read at its next write, or sync
    with pytest.raises(VrfLimitError):
        await one.lease("SN-0", "voice", max_vrfs=1)  # one VRF already, whoever made it


async def test_a_row_under_a_rowid_used_again_is_found(tmp_path):
    path = tmp_path / "leases.sqlite"
    one, two = LeaseStore(path, POOL), LeaseStore(path, POOL)
    await one.lease("SN-1", "default")
    two.sync()
    one.release("SN-1")  # the other worker has not heard of it yet
    moved = await one.lease("SN-2", "default")  # the freed rowid again
    assert await two.lease("SN-2", "default") == moved
    assert (await two.lease("SN-3", "default")).address not in {moved.address}
