"""Where a server keeps its devices and leases: one interface, two backends.

SQLite (files in the state directory) is the default for one server and its workers;
PostgreSQL (``[store] url``, :mod:`~overlay.server.postgres`) is the store a
fleet of nodes shares. Both keep every lease in memory as well, so that a
returning device costs no I/O, and both return a new lease only once it is
durable: the hello never announces an address a crash could take back.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from overlay.server.config import ServerConfig
from overlay.server.leases import Lease, LeaseStore
from overlay.server.postgres import PostgresStore
from overlay.server.registry import Enrollment, Registry
from overlay.server.sqlite import GroupCommit
from overlay.status import StoreStatus


class Store(Protocol):
    def __len__(self) -> int:
        """The number of leases this server knows."""

    def owner(self, address: ipaddress.IPv4Address) -> Lease | None:
        """The lease holding ``address``, from memory."""

    async def find(self, address: ipaddress.IPv4Address) -> Lease | None:
        """The lease holding ``address``, from the store itself: one another node or
        worker made may not be in memory yet."""

    def all(self) -> list[Lease]:
        """Every lease this server knows, by address, from memory."""

    def enrolled(self) -> int:
        """How many devices are enrolled (recent, not necessarily exact, in a fleet)."""

    def status(self) -> StoreStatus:
        """The backend, whether its last request succeeded, and its counters."""

    async def enrollment(self, device: str) -> Enrollment | None:
        """The device's enrolment, read at every handshake: ``device add`` takes effect
        at once."""

    async def enroll(
        self,
        device: str,
        password_hash: str | None,
        client_cert: bool = False,
        max_vrfs: int | None = None,
    ) -> Enrollment:
        """Enroll ``device`` (again: replace its password, certificate need and VRF limit)."""

    async def enrollments(self) -> list[Enrollment]:
        """Every enrolment, by device id."""

    async def unenroll(self, device: str) -> bool:
        """Take ``device`` out of the registry; whether it was in."""

    async def lease(self, device: str, vrf: str, max_vrfs: int, enroll: bool = False) -> Lease:
        """The lease of (device, VRF), made on first sight (enrolling the device first when
        ``enroll``); durable when it returns. Raises :class:`VrfLimitError` when the device
        holds ``max_vrfs`` others, :class:`PoolExhaustedError`, :class:`StoreError`."""

    async def release(self, device: str) -> list[Lease]:
        """Give up every lease of ``device``; return them."""

    async def close(self) -> None: ...


class SqliteStore:
    """The registry and the leases in the state directory's SQLite files, their new rows
    committed together (:class:`GroupCommit`); the workers of one server share them."""

    def __init__(self, config: ServerConfig) -> None:
        self.commits = GroupCommit()
        self.leases = LeaseStore(config.lease_file, config.pool, self.commits)
        try:
            self.registry = Registry(config.registry_file, self.commits)
        except BaseException:
            self.leases.close()
            raise

    def __len__(self) -> int:
        return len(self.leases.table)

    def owner(self, address: ipaddress.IPv4Address) -> Lease | None:
        return self.leases.table.owner(address)

    async def find(self, address: ipaddress.IPv4Address) -> Lease | None:
        lease = self.owner(address)
        if lease is None:  # another worker's, maybe
            self.leases.sync()
            lease = self.owner(address)
        return lease

    def all(self) -> list[Lease]:
        self.leases.sync()  # with the other workers'
        return self.leases.table.all()

    def enrolled(self) -> int:
        return self.registry.count()

    def status(self) -> StoreStatus:
        # a local file: its errors are errors, not an outage
        return {"backend": "sqlite", "up": True, "races": 0, "outages": 0}

    async def enrollment(self, device: str) -> Enrollment | None:
        return self.registry.get(device)

    async def enroll(
        self,
        device: str,
        password_hash: str | None,
        client_cert: bool = False,
        max_vrfs: int | None = None,
    ) -> Enrollment:
        enrollment = self.registry.add(device, password_hash, client_cert, max_vrfs)
        await self.commits.wait()
        return enrollment

    async def enrollments(self) -> list[Enrollment]:
        return self.registry.all()

    async def unenroll(self, device: str) -> bool:
        return self.registry.remove(device)

    async def lease(self, device: str, vrf: str, max_vrfs: int, enroll: bool = False) -> Lease:
        if enroll:
            self.registry.add(device, None)
        lease = await self.leases.lease(device, vrf, max_vrfs)
        await self.commits.wait()
        return lease

    async def release(self, device: str) -> list[Lease]:
        return self.leases.release(device)

    async def close(self) -> None:
        self.commits.flush()
        self.leases.close()
        self.registry.close()


async def open_store(config: ServerConfig) -> Store:
    """The store ``config`` names, open and at the newest schema (StoreError if it cannot
    be)."""
    if config.store_url is None:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        return SqliteStore(config)
    return await PostgresStore.open(config)
