"""Sticky leases of overlay addresses, kept in SQLite.

A lease is keyed by (device id, VRF) and never moves: the same device gets the
same address after reconnects and after server restarts. Every new lease is
committed before the hello that announces it is sent, in WAL mode with full
sync, so that a server killed at any moment comes back with every lease it
ever announced. The whole table is also held in memory: lookups on the
handshake path cost no I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import time
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from overlay.addressing import AddressPool
from overlay.exceptions import OverlayError, StoreError, VrfLimitError
from overlay.server.sqlite import GroupCommit, connect, transaction

MIGRATIONS = [  # a store written before schema versions has version 0 and the table already
    """
CREATE TABLE IF NOT EXISTS leases (
    device TEXT NOT NULL,
    vrf TEXT NOT NULL,
    address TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    PRIMARY KEY (device, vrf)
)
"""
]


@dataclass(frozen=True)
class Lease:
    device: str
    vrf: str
    address: ipaddress.IPv4Address
    created: float


class LeaseTable:
    """The leases a server knows, in memory: lookups on the handshake path cost no I/O."""

    def __init__(self, pool: AddressPool) -> None:
        self.pool = pool
        self._by_key: dict[tuple[str, str], Lease] = {}
        self._by_address: dict[ipaddress.IPv4Address, Lease] = {}
        self._vrfs: Counter[str] = Counter()  # leases by device
        self.last: ipaddress.IPv4Address | None = None  # where the next search starts

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, device: str, vrf: str) -> Lease | None:
        return self._by_key.get((device, vrf))

    def holds(self, device: str, vrf: str) -> bool:
        """Whether (device, VRF) has its lease already."""
        return (device, vrf) in self._by_key

    def vrfs(self, device: str) -> int:
        """How many VRFs of ``device`` hold a lease."""
        return self._vrfs[device]

    def owner(self, address: ipaddress.IPv4Address) -> Lease | None:
        """The lease holding ``address``, if any."""
        return self._by_address.get(address)

    def free(
        self,
        also_taken: Container[ipaddress.IPv4Address] = (),
        after: ipaddress.IPv4Address | None = None,
    ) -> ipaddress.IPv4Address:
        """The first address past ``after`` (by default the last one handed out) that
        neither the table nor ``also_taken`` holds; PoolExhaustedError if none."""
        return self.pool.allocate(_Either(self._by_address, also_taken), after or self.last)

    def add(self, lease: Lease) -> None:
        """Know ``lease`` (replacing what the table held for its key or its address)."""
        self.forget(lease.device, lease.vrf)
        stale = self._by_address.get(lease.address)
        if stale is not None:
            self.forget(stale.device, stale.vrf)
        self._by_key[(lease.device, lease.vrf)] = lease
        self._by_address[lease.address] = lease
        self._vrfs[lease.device] += 1
        if self.last is None or lease.address > self.last:
            self.last = lease.address

    def forget(self, device: str, vrf: str) -> Lease | None:
        lease = self._by_key.pop((device, vrf), None)
        if lease is not None:
            del self._by_address[lease.address]
            self._vrfs[device] -= 1
            if not self._vrfs[device]:
                del self._vrfs[device]
        return lease

    def of(self, device: str) -> list[Lease]:
        """Every lease of ``device`` (one per VRF)."""
        return [lease for key, lease in self._by_key.items() if key[0] == device]

    def all(self) -> list[Lease]:
        return sorted(self._by_key.values(), key=lambda lease: lease.address)


class _Either:
    """Addresses in either of two containers, without copying them."""

    def __init__(
        self, first: Container[ipaddress.IPv4Address], second: Container[ipaddress.IPv4Address]
    ) -> None:
        self.first, self.second = first, second

    def __contains__(self, address: object) -> bool:
        return address in self.first or address in self.second


class LeaseStore:
    """The lease table of one server, in SQLite; its workers (``listen.workers``) share the file.

    A new lease is stored in the :class:`GroupCommit`'s transaction, which holds
    the write lock: it first reads the rows other workers stored since its last
    read (by rowid), so that every worker hands out each address once and gives
    a (device, VRF) the lease another worker made. A device released anywhere
    is released by every worker (the supervisor sends them all the unbind),
    and each then reads the table again.
    """

    def __init__(self, path: Path, pool: AddressPool, batch: GroupCommit | None = None) -> None:
        self.path = path
        self.pool = pool
        self.batch = batch  # None: every new lease is committed at once
        self._db = connect(path, "lease store", MIGRATIONS)
        self._read = 0  # the highest rowid read
        self._wants: dict[tuple[str, str], tuple[int | None, asyncio.Future[Lease]]] = {}
        self.table = LeaseTable(pool)
        self.reload()

    def reload(self) -> None:
        """Read the whole table again (after a release, or a row another worker stored
        that rowids did not show)."""
        self.table = LeaseTable(self.pool)
        self._read = 0
        self.sync()

    def sync(self) -> None:
        """Know the leases other workers stored since the last read."""
        try:
            rows = self._db.execute(
                "SELECT rowid, device, vrf, address, created FROM leases WHERE rowid > ? "
                "ORDER BY rowid",
                (self._read,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read lease store {self.path}: {exc}") from None
        for rowid, device, vrf, address, created in rows:
            self.table.add(Lease(device, vrf, ipaddress.IPv4Address(address), created))
            self._read = rowid

    async def lease(self, device: str, vrf: str, max_vrfs: int | None = None) -> Lease:
        """Return the lease of (device, VRF), creating and storing it on first sight;
        durable when it returns.

        Raises :class:`VrfLimitError` when the device holds ``max_vrfs`` other leases,
        :class:`PoolExhaustedError` when the pool has no free address.
        """
        existing = self.table.get(device, vrf)
        if existing is not None:
            return existing
        want = self._wants.get((device, vrf))
        if want is None:
            if not self._wants and self.batch is not None:
                self.batch.later(self._db, self._store)
            want = self._wants[(device, vrf)] = (
                max_vrfs,
                asyncio.get_running_loop().create_future(),
            )
            want[1].add_done_callback(_retrieve)
            if self.batch is None:
                with transaction(self._db):
                    self._store()
        if self.batch is not None:
            await self.batch.wait()
        return await want[1]

    def _store(self) -> None:
        """In the write transaction: a lease for each (device, VRF) that asked, unless
        another worker made it meanwhile."""
        wants, self._wants = self._wants, {}
        self.sync()
        last = self.table.last
        made: list[Lease] = []
        for (device, vrf), (max_vrfs, result) in wants.items():
            try:
                lease = self._new(device, vrf, max_vrfs)
            except OverlayError as exc:
                result.set_exception(exc)
                continue
            made.append(lease)
            result.set_result(lease)
        if made and self.batch is not None:
            self.batch.undo(self._db, lambda: self._forget(made, last))

    def _new(self, device: str, vrf: str, max_vrfs: int | None) -> Lease:
        existing = self.table.get(device, vrf)
        if existing is not None:
            return existing
        if max_vrfs is not None and self.table.vrfs(device) >= max_vrfs:
            raise VrfLimitError(max_vrfs)
        try:
            return self._insert(device, vrf)
        except sqlite3.IntegrityError:  # another worker's row under a rowid used again
            self.reload()
        existing = self.table.get(device, vrf)
        if existing is not None:
            return existing
        try:
            return self._insert(device, vrf)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store lease in {self.path}: {exc}") from None

    def _insert(self, device: str, vrf: str) -> Lease:
        """Store a lease of a free address; sqlite3.IntegrityError if a row holds either."""
        lease = Lease(device, vrf, self.table.free(), time.time())
        try:
            cursor = self._db.execute(
                "INSERT INTO leases (device, vrf, address, created) VALUES (?, ?, ?, ?)",
                (device, vrf, str(lease.address), lease.created),
            )
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store lease in {self.path}: {exc}") from None
        self.table.add(lease)
        self.table.last = lease.address  # the next search starts here, after a wrap too
        self._read = max(self._read, cursor.lastrowid or 0)
        return lease

    def _forget(self, leases: list[Lease], last: ipaddress.IPv4Address | None) -> None:
        """Take back leases whose commit failed."""
        for lease in leases:
            self.table.forget(lease.device, lease.vrf)
        self.table.last = last

    def release(self, device: str) -> list[Lease]:
        """Give up every lease of ``device`` (all its VRFs); return them."""
        if self.batch is not None:
            self.batch.flush()
        self.sync()
        released = self.table.of(device)
        try:
            self._db.execute("DELETE FROM leases WHERE device = ?", (device,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot release leases in {self.path}: {exc}") from None
        self.reload()  # a rowid freed at the end is used again
        return released

    def close(self) -> None:
        self._db.close()


def _retrieve(result: asyncio.Future[Lease]) -> None:
    """A refused lease whose handshake went away is not an unhandled error."""
    if not result.cancelled():
        result.exception()
