"""Opening the server's SQLite stores (leases, registry, QoE reports) the same way,
and committing the writes of concurrent handshakes together.

WAL lets ``overlay`` commands read while the server writes; a busy timeout lets
a command that writes (``overlay device add``) wait for the server's commit
rather than fail; full sync makes every commit survive a crash.

Each store's schema has a version (``PRAGMA user_version``): the number of its
migrations applied so far. Opening a store applies the missing ones in one
transaction; a store written by a newer overlay is refused, untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from overlay.exceptions import StoreError

# One step of a schema: SQL, or a function for what SQL alone cannot say.
Migration = str | Callable[[sqlite3.Connection], None]


def connect(path: Path, what: str, migrations: Sequence[Migration]) -> sqlite3.Connection:
    """Open (creating if need be) the store at ``path`` at the newest schema version;
    ``what`` names it in errors."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        migrate(db, path, what, migrations)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} {path}: {exc}") from None
    return db


def migrate(db: sqlite3.Connection, path: Path, what: str, migrations: Sequence[Migration]) -> None:
    """Bring the store to version ``len(migrations)``, all steps in one transaction."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        db.close()
        raise StoreError(
            f"{what} {path} has schema version {version}, newer than this overlay knows "
            f"({len(migrations)}): run the overlay version that wrote it, or a newer one"
        )
    if version == len(migrations):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # again, under the lock: the workers of a server open the files at once
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for step in migrations[version:]:
            if isinstance(step, str):
                db.execute(step)
            else:
                step(db)
        db.execute(f"PRAGMA user_version = {len(migrations)}")
        db.execute("COMMIT")
    except sqlite3.Error:
        db.execute("ROLLBACK")
        raise


def connect_readonly(path: Path, what: str) -> sqlite3.Connection:
    """Open the store at ``path`` for reading only: a running server may hold it."""
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} {path}: {exc}") from None


COMMIT_WINDOW = 0.02  # seconds the first write of a group waits for others to join it


class GroupCommit:
    """One full-sync commit per store for all the writes of a short window.

    In a storm of new devices each enrolment and each lease used to be its own
    commit: two ``fdatasync`` per device, each blocking the event loop. A store
    given a GroupCommit hands it its writes (:meth:`later`); ``window`` seconds
    after the first, :meth:`flush` runs them all in one short transaction per
    store and commits it. A handshake sends its hello only after :meth:`wait`
    (the commit), so the sticky-address guarantee is unchanged. The window
    bounds the commits to one per store per window whatever the rate of
    handshakes (committing at the end of each event-loop turn still left a
    quarter of the loop's time in ``fdatasync`` at 500 handshakes a second).

    The write lock is taken only for the flush, not for the window: the
    workers of one server (``listen.workers``) share the files, and a worker
    waiting for the lock waits with its event loop stopped. A commit that
    fails is rolled back, the stores undo what they held in memory, and every
    waiter gets the :class:`StoreError`.
    """

    def __init__(self, window: float = COMMIT_WINDOW) -> None:
        self.window = window
        self._writes: dict[sqlite3.Connection, list[Callable[[], object]]] = {}
        self._undo: dict[sqlite3.Connection, list[Callable[[], None]]] = {}
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def later(self, db: sqlite3.Connection, write: Callable[[], object]) -> None:
        """Run ``write`` (statements on ``db``) in the window's transaction on ``db``."""
        self._writes.setdefault(db, []).append(write)
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            self._done.add_done_callback(_retrieve)
            self._timer = loop.call_later(self.window, self.flush)

    def undo(self, db: sqlite3.Connection, step: Callable[[], None]) -> None:
        """What a write takes back in memory should ``db``'s commit fail."""
        self._undo.setdefault(db, []).append(step)

    async def wait(self) -> None:
        """Return once this window's writes are committed (at once when there are none)."""
        if self._done is not None:
            await asyncio.shield(self._done)

    def flush(self) -> None:
        """Commit now: at the end of the window, and before a write that must not wait."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        writes, self._writes = self._writes, {}
        done, self._done = self._done, None
        error: StoreError | None = None
        for db, steps in writes.items():
            try:
                with transaction(db):
                    for write in steps:
                        write()
            except (sqlite3.Error, StoreError) as exc:
                for step in reversed(self._undo.pop(db, [])):
                    step()
                error = StoreError(f"cannot commit: {exc}")
            self._undo.pop(db, None)
        if done is not None:
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on error: the write lock is taken first,
    so that what the writes read (other workers' rows) stays true until they commit."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _retrieve(done: asyncio.Future[None]) -> None:
    """A failed commit whose waiters all went away is not an unhandled error."""
    if not done.cancelled():
        done.exception()
