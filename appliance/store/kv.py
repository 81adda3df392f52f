"""Key-value state in the store: small strings that must survive a restart.

Holds things like the MQTT session counter `sid` (DESIGN §9), bumped with `increment` at each
connect. Values are strings; callers encode anything richer (JSON). This module must not hold
secrets in clear or large blobs (use files for those), and runs no SQL on the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, overload

from appliance.store.errors import StoreValueError

if TYPE_CHECKING:
    from appliance.store.database import Database

_GET = "SELECT value FROM kv WHERE key = ?"
_SET = (
    "INSERT INTO kv (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_DELETE = "DELETE FROM kv WHERE key = ?"


class KeyValue:
    """String values by string key, stored in the `kv` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @overload
    async def get(self, key: str) -> str | None: ...

    @overload
    async def get(self, key: str, default: str) -> str: ...

    async def get(self, key: str, default: str | None = None) -> str | None:
        """The value stored under `key`, or `default` if there is none."""
        value = await self._database.read(lambda conn: _get(conn, key))
        return default if value is None else value

    async def set(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing any previous value."""
        await self._database.write(lambda conn: conn.execute(_SET, (key, value)).rowcount)

    async def set_many(self, values: Mapping[str, str]) -> None:
        """Store every pair of `values` in one transaction."""
        pairs = list(values.items())
        await self._database.write(lambda conn: conn.executemany(_SET, pairs).rowcount)

    async def delete(self, key: str) -> bool:
        """Remove `key`; return whether it was there."""
        deleted = await self._database.write(lambda conn: conn.execute(_DELETE, (key,)).rowcount)
        return deleted > 0

    async def increment(self, key: str, by: int = 1) -> int:
        """Add `by` to the integer under `key` (missing counts as 0) atomically; return it."""
        return await self._database.write(lambda conn: _increment(conn, key, by))


def _get(conn: sqlite3.Connection, key: str) -> str | None:
    """Read one value; runs on the store thread."""
    row = conn.execute(_GET, (key,)).fetchone()
    return None if row is None else str(row[0])


def _increment(conn: sqlite3.Connection, key: str, by: int) -> int:
    """Read, add and write back inside the caller's transaction; runs on the store thread."""
    current = _get(conn, key)
    try:
        value = (0 if current is None else int(current)) + by
    except ValueError as err:
        raise StoreValueError(
            f"Cannot increment {key!r}: its stored value {current!r} is not an integer; "
            "it was left unchanged."
        ) from err
    conn.execute(_SET, (key, str(value)))
    return value
