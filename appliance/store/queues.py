"""Named durable queues in the store: the chat inbox and outbox, the telemetry outbox.

Items are delivered at least once (DESIGN §8): a consumer `peek`s, handles, then `ack`s; a
failure `nack`s the item with a `not_before` time for backoff. Order is FIFO among the items
that are due. An idempotency `key` is unique per queue while its item is queued. Every queue is
bounded: `Overflow.DROP_OLDEST` keeps the newest (telemetry), `Overflow.REJECT` raises
`QueueFullError` (chat, where nothing may be lost silently).
Time is always passed in (wall-clock seconds, `Clock.time()`); this module never reads a clock,
never logs payloads, and expects one consumer per queue (`peek` takes no lease).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from appliance.store.errors import QueueFullError

if TYPE_CHECKING:
    from appliance.store.database import Database

_LOGGER = logging.getLogger(__name__)

Payload = bytes | str
# An entry for `put_many`: a payload, or a (key, payload) pair.
Entry = Payload | tuple[str | None, Payload]
_Row = tuple[str, str | None, bytes, float]

_INSERT = (
    "INSERT INTO queue_items (queue, key, payload, enqueued_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (queue, key) DO NOTHING"
)
_COUNT = "SELECT COUNT(*) FROM queue_items WHERE queue = ?"
_DROP_OLDEST = (
    "DELETE FROM queue_items WHERE id IN "
    "(SELECT id FROM queue_items WHERE queue = ? ORDER BY id LIMIT ?)"
)
_PEEK = (
    "SELECT id, key, payload, attempts, enqueued_at, not_before FROM queue_items "
    "WHERE queue = ? AND not_before <= ? ORDER BY id LIMIT ?"
)
_ACK = "DELETE FROM queue_items WHERE queue = ? AND id = ?"
_NACK = "UPDATE queue_items SET attempts = attempts + 1, not_before = ? WHERE queue = ? AND id = ?"


class Overflow(StrEnum):
    """What a full queue does with a new item."""

    DROP_OLDEST = "drop_oldest"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One queued item as read back from the store."""

    id: int
    key: str | None
    payload: bytes
    attempts: int
    enqueued_at: float
    not_before: float

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode()


@dataclass(frozen=True, slots=True)
class PutResult:
    """What one `put_many` did: items added, skipped as duplicate keys, and oldest dropped."""

    added: int
    duplicates: int
    dropped: int


class DurableQueue:
    """A bounded, named FIFO queue whose items survive restarts and crashes."""

    def __init__(
        self, database: Database, name: str, *, max_items: int, overflow: Overflow
    ) -> None:
        if max_items < 1:
            raise ValueError(f"Queue {name!r} needs max_items >= 1, got {max_items}.")
        self._database = database
        self.name = name
        self.max_items = max_items
        self.overflow = overflow
        self._dropped = 0

    @property
    def dropped(self) -> int:
        """How many items this handle has dropped to make room (`DROP_OLDEST` only)."""
        return self._dropped

    async def put(self, item: Payload, *, now: float, key: str | None = None) -> bool:
        """Enqueue one item; return False if `key` is already queued (nothing is added)."""
        result = await self.put_many([(key, item)], now=now)
        return result.added == 1

    async def put_many(self, items: Iterable[Entry], *, now: float) -> PutResult:
        """Enqueue payloads or (key, payload) pairs in one transaction, in order."""
        rows = [_row(self.name, entry, now) for entry in items]
        result = await self._database.write(lambda conn: self._insert(conn, rows))
        if result.dropped:
            self._dropped += result.dropped
            _LOGGER.debug(
                "Queue %s is full: dropped its %s oldest items", self.name, result.dropped
            )
        return result

    async def peek(self, limit: int, *, now: float) -> list[QueueItem]:
        """Up to `limit` items due at `now`, oldest first; they stay queued until acked."""
        if limit < 1:
            raise ValueError(f"peek needs limit >= 1, got {limit}.")
        args = (self.name, now, limit)
        rows = await self._database.read(lambda conn: conn.execute(_PEEK, args).fetchall())
        return [QueueItem(*row) for row in rows]

    async def ack(self, ids: Iterable[int]) -> int:
        """Remove the handled items in one transaction; return how many were still queued."""
        rows = [(self.name, item_id) for item_id in ids]
        return await self._database.write(lambda conn: conn.executemany(_ACK, rows).rowcount)

    async def nack(self, item_id: int, *, not_before: float) -> bool:
        """Count a failed attempt and hide the item until `not_before`; False if it is gone."""
        args = (not_before, self.name, item_id)
        changed = await self._database.write(lambda conn: conn.execute(_NACK, args).rowcount)
        return changed > 0

    async def depth(self) -> int:
        """How many items are queued, due or not."""
        return await self._database.read(lambda conn: _count(conn, self.name))

    def _insert(self, conn: sqlite3.Connection, rows: list[_Row]) -> PutResult:
        """Insert `rows` and enforce the bound; runs on the store thread in a transaction."""
        added = conn.executemany(_INSERT, rows).rowcount if rows else 0
        depth = _count(conn, self.name)
        excess = depth - self.max_items
        if excess <= 0:
            return PutResult(added, len(rows) - added, 0)
        if self.overflow is Overflow.REJECT:
            raise QueueFullError(self.name, depth - added, added, self.max_items)
        conn.execute(_DROP_OLDEST, (self.name, excess))
        return PutResult(added, len(rows) - added, excess)


def _row(queue: str, entry: Entry, now: float) -> _Row:
    """The insert parameters for one `put_many` entry."""
    key, payload = entry if isinstance(entry, tuple) else (None, entry)
    data = payload.encode() if isinstance(payload, str) else payload
    return (queue, key, data, now)


def _count(conn: sqlite3.Connection, queue: str) -> int:
    """How many items `queue` holds; runs on the store thread."""
    (count,) = conn.execute(_COUNT, (queue,)).fetchone()
    return int(count)
