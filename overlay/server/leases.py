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
from dataclasses import dataclass
from pathlib import Path

from overlay.addressing import AddressPool
from overlay.exceptions import StoreError
from overlay.server.sqlite import GroupCommit, connect, connect_readonly

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


class LeaseStore:
    """The lease table of one server."""

    def __init__(self, path: Path, pool: AddressPool, batch: GroupCommit | None = None) -> None:
        self.path = path
        self.pool = pool
        self.batch = batch  # None: every new lease is committed at once
        self._db = connect(path, "lease store", MIGRATIONS)
        try:
            rows = self._db.execute("SELECT device, vrf, address, created FROM leases").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read lease store {path}: {exc}") from None
        self._by_key: dict[tuple[str, str], Lease] = {}
        self._by_address: dict[ipaddress.IPv4Address, Lease] = {}
        self._last: ipaddress.IPv4Address | None = None
        self._vrfs: Counter[str] = Counter()  # leases by device
        for device, vrf, address, created in rows:
            lease = Lease(device, vrf, ipaddress.IPv4Address(address), created)
            self._by_key[(device, vrf)] = lease
            self._by_address[lease.address] = lease
            self._vrfs[device] += 1
            if self._last is None or lease.address > self._last:
                self._last = lease.address

    def __len__(self) -> int:
        return len(self._by_key)

    def holds(self, device: str, vrf: str) -> bool:
        """Whether (device, VRF) has its lease already."""
        return (device, vrf) in self._by_key

    def vrfs(self, device: str) -> int:
        """How many VRFs of ``device`` hold a lease."""
        return self._vrfs[device]

    def owner(self, address: ipaddress.IPv4Address) -> Lease | None:
        """The lease holding ``address``, if any."""
        return self._by_address.get(address)

    def lease(self, device: str, vrf: str) -> Lease:
        """Return the lease of (device, VRF), creating and storing it on first sight.

        Raises :class:`PoolExhaustedError` when the pool has no free address. With
        a :class:`GroupCommit`, a new lease is durable once its ``wait()`` returns.
        """
        existing = self._by_key.get((device, vrf))
        if existing is not None:
            return existing
        address = self.pool.allocate(self._by_address.keys(), after=self._last)
        lease = Lease(device, vrf, address, time.time())
        last = self._last
        if self.batch is not None:
            self.batch.begin(self._db)
        try:
            self._db.execute(
                "INSERT INTO leases (device, vrf, address, created) VALUES (?, ?, ?, ?)",
                (device, vrf, str(address), lease.created),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store lease in {self.path}: {exc}") from None
        self._by_key[(device, vrf)] = lease
        self._by_address[address] = lease
        self._vrfs[device] += 1
        self._last = address
        if self.batch is not None:
            self.batch.undo(self._db, lambda: self._forget(lease, last))
        return lease

    def _forget(self, lease: Lease, last: ipaddress.IPv4Address | None) -> None:
        """Take back a lease whose commit failed."""
        del self._by_key[(lease.device, lease.vrf)]
        del self._by_address[lease.address]
        self._vrfs[lease.device] -= 1
        self._last = last

    def release(self, device: str) -> list[Lease]:
        """Give up every lease of ``device`` (all its VRFs); return them."""
        released = [lease for key, lease in self._by_key.items() if key[0] == device]
        if self.batch is not None:
            self.batch.flush()
        try:
            self._db.execute("DELETE FROM leases WHERE device = ?", (device,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot release leases in {self.path}: {exc}") from None
        for lease in released:
            del self._by_key[(lease.device, lease.vrf)]
            del self._by_address[lease.address]
        self._vrfs.pop(device, None)
        return released

    def all(self) -> list[Lease]:
        return sorted(self._by_key.values(), key=lambda lease: lease.address)

    def close(self) -> None:
        self._db.close()


def read_leases(path: Path) -> list[Lease]:
    """Every lease in the store at ``path``, read only (a running server may hold it)."""
    if not path.exists():
        return []
    db = connect_readonly(path, "lease store")
    try:
        rows = db.execute("SELECT device, vrf, address, created FROM leases").fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read lease store {path}: {exc}") from None
    finally:
        db.close()
    return [Lease(d, v, ipaddress.IPv4Address(a), c) for d, v, a, c in rows]
