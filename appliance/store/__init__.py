"""Durable local state: a SQLite (WAL) store with key-value pairs and bounded queues.

`Store` is the database (`store.kv`, `store.queue(name)`), `StoreService` runs it under the
supervisor, and `atomic_write` replaces files whole. Nothing here blocks the event loop: SQLite
runs on the store's own thread, and `atomic_write` is for `asyncio.to_thread`. This package must
not know about chat, fleet or telemetry formats; it stores bytes and strings.
"""

from appliance.store.database import SCHEMA_VERSION, Database, Store
from appliance.store.errors import (
    AtomicWriteError,
    QueueFullError,
    StoreClosedError,
    StoreError,
    StoreOpenError,
    StoreValueError,
)
from appliance.store.files import atomic_write, atomic_write_text
from appliance.store.kv import KeyValue
from appliance.store.queues import DurableQueue, Entry, Overflow, Payload, PutResult, QueueItem
from appliance.store.service import StoreService
from appliance.store.transaction import Transaction

__all__ = [
    "SCHEMA_VERSION",
    "AtomicWriteError",
    "Database",
    "DurableQueue",
    "Entry",
    "KeyValue",
    "Overflow",
    "Payload",
    "PutResult",
    "QueueFullError",
    "QueueItem",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreOpenError",
    "StoreService",
    "StoreValueError",
    "Transaction",
    "atomic_write",
    "atomic_write_text",
]
