"""Sticky leases of overlay addresses, kept in SQLite.

A lease is keyed by (device id, VRF) and never moves: the same device gets the
same address after reconnects and after server restarts. Every new lease is
committed before the hello that announces it is sent, in WAL mode with full
sync, so that a server killed at any moment comes back with every lease it
ever announced. The whole table is also held in memory: lookups on the
handshake path cost no I/O, and the process is the store's only writer.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from overlay.addressing import AddressPool
from overlay.exceptions import StoreError
from overlay.server.sqlite import GroupCommit, connect

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
    """The lease table of one server, in SQLite."""

    def __init__(self, path: Path, pool: AddressPool, batch: GroupCommit | None = None) -> None:
        self.path = path
        self.pool = pool
        self.batch = batch  # None: every new lease is committed at once
        self._db = connect(path, "lease store", MIGRATIONS)
        try:
            rows = self._db.execute("SELECT device, vrf, address, created FROM leases").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read lease store {path}: {exc}") from None
        self.table = LeaseTable(pool)
        for device, vrf, address, created in rows:
            self.table.add(Lease(device, vrf, ipaddress.IPv4Address(address), created))

    def lease(self, device: str, vrf: str) -> Lease:
        """Return the lease of (device, VRF), creating and storing it on first sight.

        Raises :class:`PoolExhaustedError` when the pool has no free address. With
        a :class:`GroupCommit`, a new lease is durable once its ``wait()`` returns.
        """
        existing = self.table.get(device, vrf)
        if existing is not None:
            return existing
        lease = Lease(device, vrf, self.table.free(), time.time())
        last = self.table.last
        if self.batch is not None:
            self.batch.begin(self._db)
        try:
            self._db.execute(
                "INSERT INTO leases (device, vrf, address, created) VALUES (?, ?, ?, ?)",
                (device, vrf, str(lease.address), lease.created),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store lease in {self.path}: {exc}") from None
        self.table.add(lease)
        self.table.last = lease.address
        if self.batch is not None:
            self.batch.undo(self._db, lambda: self._forget(lease, last))
        return lease

    def _forget(self, lease: Lease, last: ipaddress.IPv4Address | None) -> None:
        """Take back a lease whose commit failed."""
        self.table.forget(lease.device, lease.vrf)
        self.table.last = last

    def release(self, device: str) -> list[Lease]:
        """Give up every lease of ``device`` (all its VRFs); return them."""
        released = self.table.of(device)
        if self.batch is not None:
            self.batch.flush()
        try:
            self._db.execute("DELETE FROM leases WHERE device = ?", (device,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot release leases in {self.path}: {exc}") from None
        for lease in released:
            self.table.forget(lease.device, lease.vrf)
        return released

    def close(self) -> None:
        self._db.close()
