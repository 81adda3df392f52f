import asyncio
from pathlib import Path

import pytest

from appliance.store import StoreClosedError, StoreService


class FakeContext:
    def __init__(self) -> None:
        self.is_ready = asyncio.Event()

    def ready(self) -> None:
        self.is_ready.set()


async def test_service_opens_reports_ready_and_closes_on_cancel(db_path: Path) -> None:
    service = StoreService(db_path)
    ctx = FakeContext()
    assert service.name == "store"
    with pytest.raises(StoreClosedError):
        _ = service.store
    task = asyncio.create_task(service.run(ctx))
    store = await service.wait_store()
    assert ctx.is_ready.is_set()
    assert service.store is store
    await store.kv.set("sid", "7")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.closed
    with pytest.raises(StoreClosedError):
        _ = service.store


async def test_service_restart_reopens_the_same_data(db_path: Path) -> None:
    service = StoreService(db_path)
    for expected in (1, 2):
        task = asyncio.create_task(service.run(FakeContext()))
        store = await service.wait_store()
        assert await store.kv.increment("sid") == expected
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
