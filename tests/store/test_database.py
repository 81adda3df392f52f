import asyncio
import sqlite3
from pathlib import Path

import pytest

from appliance.store import (
    SCHEMA_VERSION,
    Database,
    Store,
    StoreClosedError,
    StoreError,
    StoreOpenError,
)


def _pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


def _make_db(path: Path, user_version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={user_version}")
    sqlite3.connect(path).close()


async def test_open_creates_the_directory_and_turns_on_wal(store: Store, db_path: Path) -> None:
    assert store.path == db_path
    assert await asyncio.to_thread(_pragma, db_path, "journal_mode") == "wal"
    assert await asyncio.to_thread(_pragma, db_path, "user_version") == SCHEMA_VERSION


async def test_connection_uses_normal_sync_and_a_busy_timeout(db_path: Path) -> None:
    database = await Database.open(db_path)
    try:
        sync = await database.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        busy = await database.read(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0])
    finally:
        await database.close()
    assert (sync, busy) == (1, 5000)  # 1 = NORMAL


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await asyncio.to_thread(_make_db, path, SCHEMA_VERSION + 1)
    with pytest.raises(StoreOpenError) as caught:
        await Store.open(path)
    assert caught.value.code == "store_open_failed"
    assert "newer" in str(caught.value)


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await asyncio.to_thread(path.write_bytes, b"this is not sqlite" * 100)
    with pytest.raises(StoreOpenError):
        await Store.open(path)


async def test_close_is_idempotent_and_later_calls_fail(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.close()
    await store.close()
    assert store.closed
    with pytest.raises(StoreClosedError) as caught:
        await store.kv.get("sid")
    assert caught.value.code == "store_closed"


async def test_async_with_closes_the_store(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.kv.set("device", "pi-1")
    assert store.closed


async def test_sqlite_failures_become_store_errors(db_path: Path) -> None:
    database = await Database.open(db_path)
    try:
        with pytest.raises(StoreError) as caught:
            await database.write(lambda c: c.execute("INSERT INTO missing VALUES (1)"))
    finally:
        await database.close()
    assert caught.value.code == "store_failed"
