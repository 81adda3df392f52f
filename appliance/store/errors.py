"""Errors of the durable store; each has a stable `code` and says what happens next.

This module only defines errors; it must not import anything that does I/O.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class StoreError(ApplianceError):
    """A read or write of the local store failed."""

    code = "store_failed"


class StoreOpenError(StoreError):
    """The database could not be opened, configured or migrated."""

    code = "store_open_failed"


class StoreClosedError(StoreError):
    """The store was used after it was closed (or before it was opened)."""

    code = "store_closed"

    def __init__(self, what: str = "The store") -> None:
        super().__init__(f"{what} is closed; the call was not carried out.")


class StoreValueError(StoreError, ValueError):
    """A stored value is not of the type an operation needs."""

    code = "store_value_invalid"


class QueueFullError(StoreError):
    """A queue with the `reject` overflow policy has no room for the new items."""

    code = "queue_full"

    def __init__(self, queue: str, depth: int, adding: int, max_items: int) -> None:
        self.queue = queue
        self.depth = depth
        self.max_items = max_items
        super().__init__(
            f"Queue {queue!r} holds {depth} of at most {max_items} items and cannot take "
            f"{adding} more; nothing was added, retry after the queue drains."
        )


class AtomicWriteError(StoreError):
    """A file could not be replaced atomically."""

    code = "file_write_failed"
