"""The store's contract, the same tests against SQLite and PostgreSQL (a real cluster)."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lab import postgres as pg
from overlay.exceptions import ConfigError, PoolExhaustedError, StoreError, VrfLimitError
from overlay.server.config import ServerConfig, load_server_config
from overlay.server.postgres import PostgresStore
from overlay.server.store import Store, open_store
from tests.middle.conftest import write_config

Opener = Callable[..., Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def config_for(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Callable[..., ServerConfig]:
    """Configs of nodes sharing one store: ``[store]`` names the test's database."""
    store = ""
    if backend == "postgresql":
        cluster: pg.Cluster = request.getfixturevalue("postgres")
        url = request.getfixturevalue("postgres_url")
        store = f'[store]\nurl = "{url}"\npassword_file = "{cluster.password_file}"\n'

    def make(node: str = "node-a", pool: str = "169.254.1.1-169.254.1.20") -> ServerConfig:
        directory = tmp_path / f"{node}-{pool}"
        path = directory / "server.toml"
        if not path.exists():
            directory.mkdir()
            write_config(directory, store, pool)
            path.write_text(path.read_text().replace('name = "node-a"', f'name = "{node}"'))
        config = load_server_config(path)
        if backend == "sqlite":  # nodes of one SQLite store share its state directory
            object.__setattr__(config, "state_dir", tmp_path / "state")
        return config

    return make


@pytest.fixture
async def opened(config_for: Callable[..., ServerConfig]) -> AsyncIterator[Opener]:
    """Open stores with ``config_for``'s arguments; all are closed at the end."""
    stores: list[Store] = []

    async def open_one(**kwargs: str) -> Store:
        store = await open_store(config_for(**kwargs))
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()


async def test_a_lease_is_sticky_across_reconnects_and_restarts(opened: Opener) -> None:
    store = await opened()
    first = await store.lease("SN-1", "default", 8, enroll=True)
    assert await store.lease("SN-1", "default", 8) == first
    await store.close()
    reopened = await opened()
    assert await reopened.lease("SN-1", "default", 8) == first
    assert reopened.owner(first.address) == first
    assert (await reopened.enrollment("SN-1")) is not None  # enroll=True enrolled it
    assert reopened.enrolled() == 1


async def test_each_device_and_vrf_gets_its_own_address(opened: Opener) -> None:
    store = await opened()
    leases = await asyncio.gather(
        *(store.lease(f"SN-{n}", vrf, 8) for n in range(5) for vrf in ("a", "b"))
    )
    assert len({lease.address for lease in leases}) == 10
    assert {(lease.device, lease.vrf) for lease in store.all()} == {
        (f"SN-{n}", vrf) for n in range(5) for vrf in ("a", "b")
    }
    assert len(store) == 10


async def test_a_device_gets_no_more_vrfs_than_it_may(opened: Opener) -> None:
    store = await opened()
    await store.lease("SN-1", "a", 2)
    await store.lease("SN-1", "b", 2)
    with pytest.raises(VrfLimitError, match="limit of 2 VRFs"):
        await store.lease("SN-1", "c", 2)
    assert (await store.lease("SN-1", "b", 2)).vrf == "b"  # the ones it holds stay


async def test_the_pool_runs_out_with_a_clear_error(opened: Opener) -> None:
    store = await opened(pool="169.254.1.1-169.254.1.2")
    await store.lease("SN-1", "default", 8)
    await store.lease("SN-2", "default", 8)
    with pytest.raises(PoolExhaustedError, match=r"169\.254\.1\.1-169\.254\.1\.2 is exhausted"):
        await store.lease("SN-3", "default", 8)


async def test_released_addresses_are_free_again(opened: Opener) -> None:
    store = await opened(pool="169.254.1.1-169.254.1.2")
    one = await store.lease("SN-1", "a", 8)
    await store.lease("SN-1", "b", 8)
    assert {lease.vrf for lease in await store.release("SN-1")} == {"a", "b"}
    assert len(store) == 0 and store.owner(one.address) is None
    assert (await store.lease("SN-2", "default", 8)).address in {
        ipaddress.IPv4Address("169.254.1.1"),
        ipaddress.IPv4Address("169.254.1.2"),
    }
    assert await store.release("nobody") == []


async def test_the_registry_enrols_replaces_and_removes(opened: Opener) -> None:
    store = await opened()
    await store.enroll("SN-1", "hash-1")
    await store.enroll("SN-2", None, client_cert=True, max_vrfs=3)
    await store.enroll("SN-1", "hash-2")  # again: a new password
    one, two = await store.enrollments()
    assert (one.device, one.password_hash, one.client_cert) == ("SN-1", "hash-2", False)
    assert (two.device, two.password_hash, two.client_cert, two.max_vrfs) == (
        "SN-2",
        None,
        True,
        3,
    )
    assert store.enrolled() == 2
    assert await store.unenroll("SN-1")
    assert not await store.unenroll("SN-1")
    assert await store.enrollment("SN-1") is None
    assert store.enrolled() == 1


async def test_the_handshakes_of_one_turn_read_their_enrolments_together(opened: Opener) -> None:
    """What each asks, as it is now; with PostgreSQL in one query for all (a storm)."""
    store = await opened()
    other = await opened(node="node-b")  # another node, or `overlay device add`
    await other.enroll("SN-1", "hash-1")
    await other.enroll("SN-2", None, max_vrfs=2)
    queries = 0
    if isinstance(store, PostgresStore):
        run = store.run

        async def counted(work: Any) -> Any:
            nonlocal queries
            queries += 1
            return await run(work)

        store.run = counted  # type: ignore[method-assign]
    one, two, nobody, again = await asyncio.gather(
        store.enrollment("SN-1"),
        store.enrollment("SN-2"),
        store.enrollment("SN-3"),
        store.enrollment("SN-1"),
    )
    assert one is not None and one.password_hash == "hash-1" and again == one
    assert two is not None and two.max_vrfs == 2
    assert nobody is None
    assert queries == (1 if isinstance(store, PostgresStore) else 0)
    await other.enroll("SN-1", "hash-2")  # takes effect at the next handshake
    changed = await store.enrollment("SN-1")
    assert changed is not None and changed.password_hash == "hash-2"


async def test_two_nodes_never_share_an_address_or_lease_a_device_twice(opened: Opener) -> None:
    """Two nodes (or a server's workers, on SQLite) on one store, leasing at once: some
    devices reach both."""
    a = await opened(node="node-a", pool="169.254.1.1-169.254.1.250")
    b = await opened(node="node-b", pool="169.254.1.1-169.254.1.250")
    wanted = [f"SN-{n}" for n in range(120)]
    got = await asyncio.gather(
        *(a.lease(device, "default", 8) for device in wanted[:80]),
        *(b.lease(device, "default", 8) for device in wanted[40:]),
    )
    by_device: dict[str, set[ipaddress.IPv4Address]] = {}
    for lease in got:
        by_device.setdefault(lease.device, set()).add(lease.address)
    assert all(len(addresses) == 1 for addresses in by_device.values())  # one per device
    assert len({next(iter(a)) for a in by_device.values()}) == 120  # and no address twice


async def test_a_newer_schema_is_refused_untouched(
    opened: Opener, backend: str, config_for: Callable[..., ServerConfig]
) -> None:
    store = await opened()
    await store.lease("SN-1", "default", 8)
    await store.close()
    config = config_for()

    def query(sql: str) -> list[tuple[object, ...]]:
        """``sql`` on the store itself, outside the overlay."""
        if backend == "sqlite":
            db = sqlite3.connect(config.lease_file)
            try:
                return db.execute(sql).fetchall()
            finally:
                db.commit()
                db.close()
        import psycopg

        assert config.store_url is not None and config.store_password_file is not None
        password = config.store_password_file.read_text().strip()
        with psycopg.connect(config.store_url, password=password, autocommit=True) as conn:
            cursor = conn.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    version = "PRAGMA user_version" if backend == "sqlite" else "SELECT version FROM overlay_schema"
    query(
        "PRAGMA user_version = 99"
        if backend == "sqlite"
        else "UPDATE overlay_schema SET version = 99"
    )
    with pytest.raises(StoreError, match="schema version 99, newer than this overlay knows") as e:
        await open_store(config)
    assert "\n" not in str(e.value)
    assert query(version) == [(99,)]  # untouched: no migration ran
    assert query("SELECT device FROM leases") == [("SN-1",)]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_wrong_password_is_a_one_line_error(
    config_for: Callable[..., ServerConfig], tmp_path: Path
) -> None:
    config = config_for()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    object.__setattr__(config, "store_password_file", wrong)
    with pytest.raises(StoreError, match="password authentication failed") as e:
        await open_store(config)
    assert "\n" not in str(e.value)


def test_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[store]\nurl = "postgresql://overlay:secret@db/overlay"\n')
    with pytest.raises(ConfigError, match=r"store\.url.*password_file or in a PGPASSFILE"):
        load_server_config(path)


def test_a_store_url_must_be_sqlite_or_postgresql(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[store]\nurl = "mysql://db/overlay"\n')
    with pytest.raises(ConfigError, match="neither sqlite: nor a postgresql:// URL"):
        load_server_config(path)
