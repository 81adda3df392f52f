"""Several key-value and queue changes committed together: one transaction, one SD card write.

`Store.transaction(work)` runs `work(tx)` on the store thread inside one SQLite transaction;
`tx` offers the same operations as `KeyValue` and `DurableQueue`, synchronously, and everything
it did is committed together or not at all. Callers use it where a crash between two writes
would lose or repeat something (the chat hub: accept an event and remember it was seen; store
the replies and drop the answered events) and to batch many small writes into one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from appliance.store.errors import QueueFullError
from appliance.store.kv import _DELETE, _SET, _get
from appliance.store.queues import (
    _ACK,
    _COUNT,
    _DROP_OLDEST,
    _NACK,
    DurableQueue,
    Entry,
    Overflow,
    _row,
)

_INSERT_RETURNING = (
    "INSERT INTO queue_items (queue, key, payload, enqueued_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (queue, key) DO NOTHING RETURNING id"
)
_EXPIRE = "DELETE FROM kv WHERE key >= ? AND key < ? AND CAST(value AS REAL) < ?"


class Transaction:
    """Synchronous store operations inside one open transaction; only valid inside `work`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, key: str) -> str | None:
        """The value under `key`, or None."""
        return _get(self._conn, key)

    def set(self, key: str, value: str) -> None:
        """Store `value` under `key`."""
        self._conn.execute(_SET, (key, value))

    def delete(self, key: str) -> bool:
        """Remove `key`; whether it was there."""
        return self._conn.execute(_DELETE, (key,)).rowcount > 0

    def forget_all(self, keep: frozenset[str] = frozenset()) -> int:
        """Drop every queued item and every key except `keep` (a factory reset); how many."""
        items = self._conn.execute("DELETE FROM queue_items").rowcount
        marks = ",".join("?" * len(keep))
        keys = self._conn.execute(
            f"DELETE FROM kv WHERE key NOT IN ({marks})" if keep else "DELETE FROM kv",
            tuple(sorted(keep)),
        ).rowcount
        return int(items + keys)

    def expire(self, prefix: str, before: float) -> int:
        """Remove the keys under `prefix` whose value is a number below `before`; how many."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self._conn.execute(_EXPIRE, (prefix, upper, before)).rowcount

    def put(self, queue: DurableQueue, entries: Iterable[Entry], *, now: float) -> list[int | None]:
        """Enqueue in order; each entry's new item id, or None where its key was queued already.

        The queue's bound applies as in `DurableQueue.put_many`.
        """
        ids: list[int | None] = []
        for entry in entries:
            row = self._conn.execute(_INSERT_RETURNING, _row(queue.name, entry, now)).fetchone()
            ids.append(None if row is None else int(row[0]))
        (depth,) = self._conn.execute(_COUNT, (queue.name,)).fetchone()
        added = sum(1 for i in ids if i is not None)
        excess = depth - queue.max_items
        if excess > 0 and queue.overflow is Overflow.REJECT:
            raise QueueFullError(queue.name, depth - added, added, queue.max_items)
        if excess > 0:
            self._conn.execute(_DROP_OLDEST, (queue.name, excess))
        return ids

    def ack(self, queue: DurableQueue, ids: Iterable[int]) -> int:
        """Remove handled items; how many were still queued."""
        rows = [(queue.name, item_id) for item_id in ids]
        return self._conn.executemany(_ACK, rows).rowcount if rows else 0

    def nack(self, queue: DurableQueue, item_id: int, *, not_before: float) -> bool:
        """Count a failed attempt and hide the item until `not_before`."""
        return self._conn.execute(_NACK, (not_before, queue.name, item_id)).rowcount > 0
