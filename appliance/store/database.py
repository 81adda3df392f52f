"""The appliance's SQLite database: one file in WAL mode, one connection, one thread.

`Store` opens the file, creates or migrates the schema (tracked in `PRAGMA user_version`) and
hands out the key-value table (`store.kv`) and named durable queues (`store.queue(name)`).
Every SQLite call runs on the store's own worker thread; the async API only awaits it, so the
event loop never blocks on the disk (STYLE rule 7).

Durability (DESIGN §8): `synchronous=NORMAL` in WAL mode survives a crash of the process
without losing a committed transaction; a power cut may roll back the last few commits but
never corrupts the file. Writes are batched into few transactions to spare the SD card.
This module must not be called from more than one process at a time, and must never run
SQLite on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from appliance.store.errors import StoreClosedError, StoreError, StoreOpenError
from appliance.store.kv import KeyValue
from appliance.store.queues import DurableQueue, Overflow
from appliance.store.transaction import Transaction

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

BUSY_TIMEOUT_MS = 5_000
# Truncate the WAL back to this size after a checkpoint so it cannot grow without bound.
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024

# _MIGRATIONS[n] takes the schema from version n to n + 1; append only, never edit a released one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE queue_items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            queue TEXT NOT NULL,
            key TEXT,
            payload BLOB NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            enqueued_at REAL NOT NULL,
            not_before REAL NOT NULL DEFAULT 0,
            UNIQUE (queue, key)
        )""",
        "CREATE INDEX queue_items_by_queue ON queue_items (queue, id)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in one write transaction; roll back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full).
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Database:
    """One SQLite connection owned by one worker thread; `read` and `write` run work there."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    async def open(cls, path: Path) -> Database:
        """Open (creating if needed) and migrate the database at `path`."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, path)
        except BaseException:
            await asyncio.to_thread(executor.shutdown)
            raise
        return cls(path, executor, conn)

    @property
    def closed(self) -> bool:
        """Whether `close` has been called."""
        return self._conn is None

    async def read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work(connection)` on the store thread and return its result."""
        return await self._submit(work)

    async def write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work(connection)` on the store thread in one transaction; roll back on error."""
        return await self._submit(lambda conn: _in_transaction(conn, work))

    async def _submit(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work` on the store thread; report SQLite failures as `StoreError`."""
        conn = self._conn
        if conn is None:
            raise StoreClosedError(f"The store at {self.path}")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work, conn)
        except sqlite3.Error as err:
            raise StoreError(
                f"A store operation on {self.path} failed ({err}); nothing of it was saved."
            ) from err

    async def close(self) -> None:
        """Close the connection and stop the thread; safe to call more than once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # Shielded: a second cancellation during shutdown must not leave the file open.
            await asyncio.shield(self._shut_down(conn))

    async def _shut_down(self, conn: sqlite3.Connection) -> None:
        """Close `conn` on its thread, then let the thread end."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, conn.close)
        finally:
            await asyncio.to_thread(self._executor.shutdown)
        _LOGGER.info("Closed store %s", self.path)


class Store:
    """Durable local state: key-value pairs and named queues in one SQLite file."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._kv = KeyValue(database)

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open the store at `path`, creating the file and its parent directory if needed."""
        return cls(await Database.open(path))

    @property
    def path(self) -> Path:
        """The database file."""
        return self._database.path

    @property
    def closed(self) -> bool:
        """Whether the store has been closed."""
        return self._database.closed

    @property
    def kv(self) -> KeyValue:
        """The key-value table."""
        return self._kv

    def queue(
        self, name: str, *, max_items: int = 10_000, overflow: Overflow = Overflow.REJECT
    ) -> DurableQueue:
        """A handle on the named queue, bounded to `max_items`; create one handle and share it."""
        return DurableQueue(self._database, name, max_items=max_items, overflow=overflow)

    async def transaction(self, work: Callable[[Transaction], _T]) -> _T:
        """Run `work(tx)` on the store thread; everything it changes commits together or not."""
        return await self._database.write(lambda conn: work(Transaction(conn)))

    async def close(self) -> None:
        """Close the store; safe to call more than once."""
        await self._database.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run `work` inside one transaction on the store thread."""
    with _transaction(conn):
        return work(conn)


def _connect(path: Path) -> sqlite3.Connection:
    """Open, configure and migrate the database; runs on the store thread."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except (OSError, sqlite3.Error) as err:
        raise StoreOpenError(
            f"Could not open the store at {path} ({err}); it stays closed."
        ) from err
    try:
        _configure(conn, path)
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    """Switch to WAL with NORMAL sync, a busy timeout and a bounded WAL file."""
    try:
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
    except sqlite3.Error as err:
        raise StoreOpenError(
            f"Could not configure the store at {path} ({err}); it stays closed."
        ) from err
    if mode != "wal":
        raise StoreOpenError(
            f"The store at {path} cannot use WAL mode (got {mode!r}); it stays closed."
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to `SCHEMA_VERSION`, one transaction per step."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreOpenError(
            f"The store at {path} has schema version {version}, newer than this software's "
            f"{SCHEMA_VERSION}; it stays closed rather than risk damaging it."
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _apply(conn, path, target)
    _LOGGER.info("Opened store %s (schema version %s)", path, SCHEMA_VERSION)


def _apply(conn: sqlite3.Connection, path: Path, target: int) -> None:
    """Apply the migration that produces schema version `target`."""
    try:
        with _transaction(conn):
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
    except sqlite3.Error as err:
        raise StoreOpenError(
            f"Could not migrate the store at {path} to schema version {target} ({err}); "
            "it was left at the previous version and stays closed."
        ) from err
    _LOGGER.info("Migrated store %s to schema version %s", path, target)
