"""The fleet's store: the device registry and the leases in PostgreSQL, shared by every node.

The driver is psycopg 3 with psycopg_pool. It runs on libpq, so ``store.url``
means what it means to ``psql``: URLs, service files, ``PGPASSFILE``,
``sslmode``, several hosts with ``target_session_attrs``. Its async and sync
APIs share one SQL. asyncpg is faster per query, but it reimplements the
protocol and leaves out part of libpq's connection options. Our queries are
few and batched, so that speed buys nothing here.

The database makes allocation safe: the lease table's primary key is
(device, VRF) and its address is UNIQUE. A node chooses addresses from its
own view and inserts them with ``ON CONFLICT DO NOTHING``. A row that does
not come back lost a race. Either another node leased that (device, VRF), and
its lease is used, or another node took that address, and the node tries
another one, away from where the two nodes collided. New leases of one
window share one transaction, as the SQLite store's group commit does. A
returning device whose lease the node knows costs no query at all.

When the store cannot be reached, a device this node has seen is admitted
from memory; a new device is refused until the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import errors
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from overlay.exceptions import PoolExhaustedError, StoreError, VrfLimitError
from overlay.server.config import ServerConfig
from overlay.server.leases import Lease, LeaseTable
from overlay.server.registry import COLUMNS, Enrollment, enrollment_of
from overlay.server.sqlite import COMMIT_WINDOW
from overlay.status import StoreStatus

log = structlog.get_logger("overlay.server")

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]

CONNECT_TIMEOUT = 5  # seconds to reach the store at start
WAIT = 3.0  # seconds a request waits for a connection before the store counts as down
POOL_SIZE = 4
PROBE = 1.0  # seconds between two tries to reach a store that is down
COUNT = 5  # seconds between two reads of the enrolled count (for status and metrics)
REFRESH = 30  # seconds between reloads of the fleet's leases (those other nodes made)
ROUNDS = 16  # tries to find a free address for a lease before giving up
ATTEMPTS = 5  # tries of a batch that deadlocked with another node's
# Every node LISTENs (overlay.server.fleet): a device unbound or removed anywhere, by id.
DEVICES_CHANNEL = "overlay_devices"
SCHEMA_LOCK = 0x6F766C  # pg_advisory_xact_lock key: one node migrates at a time

MIGRATIONS: list[str] = [
    """
CREATE TABLE devices (
    id text PRIMARY KEY,
    password_hash text,
    created double precision NOT NULL,
    client_cert boolean NOT NULL DEFAULT false,
    max_vrfs integer
);
CREATE TABLE leases (
    device text NOT NULL,
    vrf text NOT NULL,
    address inet NOT NULL UNIQUE,
    created double precision NOT NULL,
    node text NOT NULL,
    PRIMARY KEY (device, vrf)
);
CREATE TABLE tunnels (
    device text NOT NULL,
    vrf text NOT NULL,
    node text NOT NULL,
    session text NOT NULL,
    since double precision NOT NULL,
    seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, vrf)
);
CREATE INDEX tunnels_node ON tunnels (node);
""",
]
LEASE_COLUMNS = "device, vrf, address, created"


@dataclass
class _Want:
    """A handshake waiting for a new lease."""

    device: str
    vrf: str
    max_vrfs: int
    enroll: bool
    done: asyncio.Future[Lease] = field(repr=False)


class PostgresStore:
    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        url: str,
        kwargs: dict[str, Any],
        config: ServerConfig,
    ) -> None:
        self._pool = pool
        self._kwargs = kwargs  # what connections get besides the URL (the password)
        self.node = config.node
        self.url = url
        self.table = LeaseTable(config.pool)
        self.window = COMMIT_WINDOW
        self._enrollments: dict[str, Enrollment] = {}  # as last read: admits them in an outage
        self._enrolled = 0
        self._up = True
        self.races = 0  # new leases another node won first
        self.outages = 0
        self._wants: list[_Want] = []
        self._reads: dict[str, list[asyncio.Future[Enrollment | None]]] = {}  # this turn's
        self._timer: asyncio.TimerHandle | None = None
        self._allocating = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # batches being allocated
        self._refresher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, config: ServerConfig) -> PostgresStore:
        """Connect, migrate the schema, read the leases; StoreError with libpq's reason."""
        url = config.store_url
        assert url is not None
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": f"overlay {config.node}"}
        if config.store_password_file is not None:
            try:
                kwargs["password"] = config.store_password_file.read_text().strip()
            except OSError as exc:
                raise StoreError(
                    f"cannot read store.password_file {config.store_password_file}: {exc.strerror}"
                ) from None
        try:
            async with await psycopg.AsyncConnection.connect(
                url, connect_timeout=CONNECT_TIMEOUT, **kwargs
            ) as conn:
                await migrate(conn, url)
        except psycopg.Error as exc:
            raise StoreError(f"cannot use the store {url}: {reason(exc)}") from None
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=WAIT,
            # No check at every getconn: it cost a round trip per query, an eighth of a
            # worker's CPU in a storm. A connection a query finds broken marks the store
            # down; the probe then has the pool check them all (_probe), and the pool
            # drops a broken one when it comes back.
            open=False,
            name=f"overlay-{config.node}",
        )
        await pool.open()
        store = cls(pool, url, kwargs, config)
        try:
            await store.refresh()
        except StoreError:
            await pool.close()
            raise
        store._refresher = asyncio.create_task(store._refreshing())
        return store

    def __len__(self) -> int:
        return len(self.table)

    def owner(self, address: ipaddress.IPv4Address) -> Lease | None:
        return self.table.owner(address)

    async def find(self, address: ipaddress.IPv4Address) -> Lease | None:
        """The lease of ``address`` from the database when memory does not know it
        (StoreError when it cannot be asked)."""
        known = self.table.owner(address)
        if known is not None:
            return known
        found = await self.run(lambda conn: _leases(conn, "address = %s", (str(address),)))
        if not found:
            return None
        self.table.add(found[0])
        return found[0]

    def all(self) -> list[Lease]:
        return self.table.all()

    def enrolled(self) -> int:
        return self._enrolled

    def status(self) -> StoreStatus:
        return {
            "backend": "postgresql",
            "up": self._up,
            "races": self.races,
            "outages": self.outages,
        }

    async def refresh(self) -> None:
        """Read the fleet's leases and the enrolled count again (leases other nodes made)."""

        async with self._allocating:  # a batch adds its leases to the table it started with
            leases = await self.run(lambda conn: _leases(conn, "true", ()))
            self._replace(leases)
        await self.count()

    async def count(self) -> None:
        """Read the number of enrolled devices again (any node or CLI may enroll)."""
        rows = await self.run(lambda conn: fetch(conn, "SELECT count(*) FROM devices", ()))
        self._enrolled = rows[0][0]

    def _replace(self, leases: list[Lease]) -> None:
        table = LeaseTable(self.table.pool)
        for lease in leases:
            table.add(lease)
        table.last = self.table.last or table.last
        self.table = table

    async def _refreshing(self) -> None:
        """The enrolled count every COUNT seconds, the leases every REFRESH."""
        for beat in itertools.count(1):
            await asyncio.sleep(COUNT)
            with contextlib.suppress(StoreError):
                await (self.refresh() if beat % (REFRESH // COUNT) == 0 else self.count())

    async def enrollment(self, device: str) -> Enrollment | None:
        """The device's enrolment as the store has it now. The handshakes of one turn of
        the event loop share one query (a storm's many, the store's one round trip)."""
        if not self._reads:
            asyncio.get_running_loop().call_soon(self._read_enrollments)
        done: asyncio.Future[Enrollment | None] = asyncio.get_running_loop().create_future()
        self._reads.setdefault(device, []).append(done)
        return await done

    def _read_enrollments(self) -> None:
        reads, self._reads = self._reads, {}
        task = asyncio.create_task(self._answer(reads))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, reads: dict[str, list[asyncio.Future[Enrollment | None]]]) -> None:
        """Read the enrolments of ``reads`` at once; in an outage, answer those memory knows
        (they are admitted) and fail the others."""
        devices = list(reads)
        try:
            rows = await self.run(
                lambda conn: fetch(
                    conn, f"SELECT {COLUMNS} FROM devices WHERE id = ANY(%s)", (devices,)
                )
            )
        except StoreError as exc:
            for device, waiting in reads.items():
                known = self._enrollments.get(device)
                for done in waiting:
                    if done.done():
                        continue
                    if known is None:
                        done.set_exception(exc)
                    else:
                        done.set_result(known)
            return
        found = {row[0]: enrollment_of(row) for row in rows}
        for device, waiting in reads.items():
            enrollment = found.get(device)
            if enrollment is None:
                self._enrollments.pop(device, None)
            else:
                self._enrollments[device] = enrollment
            for done in waiting:
                if not done.done():  # its handshake may have timed out meanwhile
                    done.set_result(enrollment)

    async def enroll(
        self,
        device: str,
        password_hash: str | None,
        client_cert: bool = False,
        max_vrfs: int | None = None,
    ) -> Enrollment:
        enrollment = Enrollment(device, password_hash, time.time(), client_cert, max_vrfs)
        rows = await self.run(
            lambda conn: fetch(
                conn,
                f"INSERT INTO devices ({COLUMNS}) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash, "
                "client_cert = excluded.client_cert, max_vrfs = excluded.max_vrfs "
                "RETURNING (xmax = 0)",  # true: a new row, not an update
                (device, password_hash, enrollment.created, client_cert, max_vrfs),
            )
        )
        self._enrolled += rows[0][0]
        self._enrollments[device] = enrollment
        return enrollment

    async def enrollments(self) -> list[Enrollment]:
        rows = await self.run(
            lambda conn: fetch(conn, f"SELECT {COLUMNS} FROM devices ORDER BY id", ())
        )
        self._enrolled = len(rows)
        return [enrollment_of(row) for row in rows]

    async def unenroll(self, device: str) -> bool:
        rows = await self.run(
            lambda conn: fetch(
                conn,
                "WITH gone AS (DELETE FROM devices WHERE id = %s RETURNING id) "
                f"SELECT id, pg_notify('{DEVICES_CHANNEL}', id) FROM gone",
                (device,),
            )
        )
        self.forget(device)
        self._enrolled -= len(rows)
        return bool(rows)

    def forget(self, device: str) -> None:
        """Drop what memory holds of ``device``: it was unbound or removed (on any node)."""
        self._enrollments.pop(device, None)
        for lease in self.table.of(device):
            self.table.forget(lease.device, lease.vrf)

    async def lease(self, device: str, vrf: str, max_vrfs: int, enroll: bool = False) -> Lease:
        known = self.table.get(device, vrf)
        if known is not None:
            return known
        loop = asyncio.get_running_loop()
        want = _Want(device, vrf, max_vrfs, enroll, loop.create_future())
        self._wants.append(want)
        if self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await want.done

    def _flush(self) -> None:
        """The window is over: allocate what it gathered, in one transaction."""
        self._timer = None
        wants, self._wants = self._wants, []
        task = asyncio.create_task(self._allocate(wants))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _allocate(self, wants: list[_Want]) -> None:
        async with self._allocating:  # one batch at a time: they choose from one table
            results: dict[tuple[str, str], Lease | Exception] = {}
            for attempt in range(ATTEMPTS):
                try:
                    results = await self.run(lambda conn: self._insert(conn, wants))
                    break
                except (errors.DeadlockDetected, errors.SerializationFailure):
                    # two nodes' batches locked rows in opposite orders: one gave way
                    await asyncio.sleep(random.uniform(0, self.window * (attempt + 1)))
                except StoreError as exc:
                    results = {(want.device, want.vrf): exc for want in wants}
                    break
            else:
                error = StoreError("the store stayed busy with other nodes' leases; try later")
                results = {(want.device, want.vrf): error for want in wants}
        for want in wants:
            result = results[(want.device, want.vrf)]
            if want.done.done():  # the handshake went away
                continue
            if isinstance(result, Exception):
                want.done.set_exception(result)
            else:
                want.done.set_result(result)

    async def _insert(
        self, conn: Connection, wants: Sequence[_Want]
    ) -> dict[tuple[str, str], Lease | Exception]:
        """One transaction: enrol who asked for it, then lease each (device, VRF) the fleet
        has no lease for, retrying the ones that lost a race to another node."""
        now = time.time()
        results: dict[tuple[str, str], Lease | Exception] = {}
        async with conn.transaction():
            enroll = sorted({want.device for want in wants if want.enroll})
            if enroll:
                await conn.execute(
                    "INSERT INTO devices (id, created) SELECT unnest(%s::text[]), %s "
                    "ON CONFLICT DO NOTHING",
                    (enroll, now),
                )
            devices = sorted({want.device for want in wants})
            held = await _leases(conn, "device = ANY(%s)", (devices,))
            known = {(lease.device, lease.vrf): lease for lease in held}
            vrfs = Counter(lease.device for lease in held)
            taken = {lease.address for lease in held}
            pending: list[tuple[str, str]] = []
            for want in wants:
                key = (want.device, want.vrf)
                if key in results or key in pending:
                    continue
                if key in known:
                    results[key] = known[key]
                elif vrfs[want.device] >= want.max_vrfs:
                    results[key] = VrfLimitError(want.max_vrfs)
                else:
                    vrfs[want.device] += 1
                    pending.append(key)
            after = self.table.last
            for _ in range(ROUNDS):
                if not pending:
                    break
                rows: list[tuple[str, str, ipaddress.IPv4Address]] = []
                for device, vrf in pending:
                    try:
                        after = self.table.free(taken, after)
                    except PoolExhaustedError as exc:
                        results[(device, vrf)] = exc
                        continue
                    taken.add(after)
                    rows.append((device, vrf, after))
                rows.sort(key=lambda row: row[2])  # lock in one order: fewer deadlocks
                inserted = (
                    await fetch(
                        conn,
                        f"INSERT INTO leases ({LEASE_COLUMNS}, node) "
                        "SELECT d, v, a, %s, %s FROM unnest(%s::text[], %s::text[], %s::inet[]) "
                        f"AS t(d, v, a) ON CONFLICT DO NOTHING RETURNING {LEASE_COLUMNS}",
                        (now, self.node, *columns(rows)),
                    )
                    if rows
                    else []
                )
                for lease in map(_lease, inserted):
                    results[(lease.device, lease.vrf)] = lease
                lost = [(d, v, a) for d, v, a in rows if (d, v) not in results]
                if not lost:
                    break
                self.races += len(lost)
                # Another node leased the same (device, VRF) or took one of these addresses
                # first: learn what it holds, and search elsewhere than where we collided.
                for lease in await _leases(
                    conn,
                    "(device, vrf) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
                    "OR address = ANY(%s::inet[])",
                    columns(lost),
                ):
                    taken.add(lease.address)
                    if (lease.device, lease.vrf) in pending:
                        results[(lease.device, lease.vrf)] = lease
                pending = [(d, v) for d, v, _ in lost if (d, v) not in results]
                after = self.table.pool.random()
            for key in pending:
                if key not in results:
                    results[key] = StoreError("no free address found for the lease; try again")
        for result in results.values():  # committed: the table may know them now
            if isinstance(result, Lease):
                self.table.add(result)
        for device in enroll:  # known now: admitted from memory should the store go away
            self._enrollments.setdefault(device, Enrollment(device, None, now))
        if after is not None:
            self.table.last = after
        return results

    async def release(self, device: str) -> list[Lease]:
        async def delete(conn: Connection) -> list[Lease]:
            async with conn.transaction():  # every node hears of it once it is done
                released = await _leases(conn, "device = %s", (device,), delete=True)
                await conn.execute("SELECT pg_notify(%s, %s)", (DEVICES_CHANNEL, device))
            return released

        released = await self.run(delete)
        self.forget(device)
        return released

    async def close(self) -> None:
        """Answer the handshakes waiting for leases, then disconnect."""
        for task in (self._refresher, self._prober):
            if task is not None:
                task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._flush()
        running = [self._refresher, self._prober, *self._tasks]
        await asyncio.gather(*filter(None, running), return_exceptions=True)
        await self._pool.close()

    async def run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection; StoreError (and the store marked down) when
        the store cannot be reached. While it is down, fail at once: a handshake must not
        wait for a timeout that the probe already knows the outcome of."""
        if not self._up:
            raise StoreError(f"the store {self.url} is unavailable")
        try:
            async with self._pool.connection() as conn:
                result = await work(conn)
        except (errors.DeadlockDetected, errors.SerializationFailure):
            self._mark(True)
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._mark(False, reason(exc))
            raise StoreError(f"the store {self.url} is unavailable: {reason(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"the store {self.url}: {reason(exc)}") from None
        self._mark(True)
        return result

    async def connect(self) -> Connection:
        """A connection of its own, outside the pool (for LISTEN, and to probe)."""
        return await psycopg.AsyncConnection.connect(
            self.url, connect_timeout=CONNECT_TIMEOUT, **self._kwargs
        )

    def _mark(self, up: bool, why: str = "") -> None:
        """Log each change of the store's state once; probe for its return while down."""
        if up == self._up:
            return
        self._up = up
        self.outages += not up
        if up:
            log.info("the store is back", store=self.url)
            return
        log.error(
            "the store is unavailable: known devices are admitted, new ones refused",
            store=self.url,
            error=why,
        )
        self._prober = asyncio.create_task(self._probe())

    async def _probe(self) -> None:
        """Until the store answers again, on a connection of its own (the pool's may be
        broken ones); then let the pool drop its broken connections."""
        while True:
            await asyncio.sleep(PROBE)
            with contextlib.suppress(psycopg.Error, OSError):
                async with await self.connect() as conn:
                    await conn.execute("SELECT 1")
                break
        await self._pool.check()
        self._mark(True)
        with contextlib.suppress(StoreError):
            await self.refresh()


async def migrate(conn: Connection, url: str) -> None:
    """Bring the schema to ``len(MIGRATIONS)``, one node at a time, all steps in one
    transaction; refuse a schema newer than this overlay knows."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS overlay_schema (version integer NOT NULL)")
        rows = await fetch(conn, "SELECT version FROM overlay_schema", ())
        if not rows:
            await conn.execute("INSERT INTO overlay_schema (version) VALUES (0)")
        version = rows[0][0] if rows else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the store {url} has schema version {version}, newer than this overlay knows "
                f"({len(MIGRATIONS)}): upgrade this node to the fleet's overlay version"
            )
        for step in MIGRATIONS[version:]:
            await conn.execute(step.encode())
        await conn.execute("UPDATE overlay_schema SET version = %s", (len(MIGRATIONS),))


def reason(exc: BaseException) -> str:
    """libpq's reason, on one line."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines()[:2])


async def fetch(
    conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> list[TupleRow]:
    """The rows of ``sql`` (built from our own constants, never from input)."""
    cursor = await conn.execute(sql.encode(), params)
    return await cursor.fetchall()


async def execute(conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> int:
    """Run ``sql`` (our own constant); how many rows it touched."""
    cursor = await conn.execute(sql.encode(), params)
    return cursor.rowcount


async def _leases(
    conn: Connection, where: str, params: Sequence[Any], delete: bool = False
) -> list[Lease]:
    sql = (
        f"DELETE FROM leases WHERE {where} RETURNING {LEASE_COLUMNS}"
        if delete
        else f"SELECT {LEASE_COLUMNS} FROM leases WHERE {where}"
    )
    return [_lease(row) for row in await fetch(conn, sql, params)]


def columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as columns: arrays for ``unnest``."""
    return [list(column) for column in zip(*rows, strict=True)]


def _lease(row: TupleRow) -> Lease:
    device, vrf, address, created = row
    return Lease(device, vrf, ipaddress.IPv4Address(address), created)
