"""The store as a supervised service: opens the database first and closes it last (DESIGN §3).

Other services get the open `Store` from `StoreService.store` once this service is ready (the
supervisor starts the store first), or await `wait_store()`. After a restart of this service
they must fetch it again: the old handle raises `StoreClosedError`. This module must not run
SQLite itself or reach into other services.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from appliance.store.database import Store
from appliance.store.errors import StoreClosedError


class ReadyContext(Protocol):
    """The part of the supervisor's service context this service uses."""

    def ready(self) -> None:
        """Tell the supervisor the service is serving."""
        ...


class StoreService:
    """Keeps the store open while it runs; the first service to start and the last to stop."""

    name = "store"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store: Store | None = None
        self._opened = asyncio.Event()

    @property
    def store(self) -> Store:
        """The open store; raises `StoreClosedError` before ready or after stop."""
        if self._store is None:
            raise StoreClosedError(f"The store service for {self.path}")
        return self._store

    async def wait_store(self) -> Store:
        """Wait until the store is open, then return it."""
        await self._opened.wait()
        return self.store

    async def run(self, ctx: ReadyContext) -> None:
        """Open the store, report ready, and hold it open until cancelled."""
        store = await Store.open(self.path)
        try:
            self._store = store
            self._opened.set()
            ctx.ready()
            await asyncio.Event().wait()  # until cancelled; CancelledError propagates
        finally:
            self._opened.clear()
            self._store = None
            await store.close()
