import asyncio
from pathlib import Path

import pytest

from appliance.store import Store, StoreValueError


async def test_get_returns_default_for_missing_keys(store: Store) -> None:
    assert await store.kv.get("missing") is None
    assert await store.kv.get("missing", "fallback") == "fallback"


async def test_set_get_overwrite_and_delete(store: Store) -> None:
    await store.kv.set("device", "pi-1")
    await store.kv.set("device", "pi-2")
    assert await store.kv.get("device") == "pi-2"
    assert await store.kv.delete("device") is True
    assert await store.kv.delete("device") is False
    assert await store.kv.get("device") is None


async def test_set_many_stores_every_pair(store: Store) -> None:
    await store.kv.set_many({"fleet": "lab", "device": "pi-1", "empty": ""})
    values = [await store.kv.get(key) for key in ("fleet", "device", "empty")]
    assert values == ["lab", "pi-1", ""]


async def test_values_survive_reopen(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.kv.set("model", "intent-v3")
        await store.kv.increment("sid")
    async with await Store.open(db_path) as store:
        assert await store.kv.get("model") == "intent-v3"
        assert await store.kv.increment("sid") == 2


async def test_increment_is_atomic_under_concurrent_callers(store: Store) -> None:
    results = await asyncio.gather(*(store.kv.increment("sid") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert await store.kv.get("sid") == "50"


async def test_increment_by_a_step(store: Store) -> None:
    assert await store.kv.increment("n", by=10) == 10
    assert await store.kv.increment("n", by=-3) == 7


async def test_increment_refuses_a_non_integer(store: Store) -> None:
    await store.kv.set("sid", "abc")
    with pytest.raises(StoreValueError) as caught:
        await store.kv.increment("sid")
    assert caught.value.code == "store_value_invalid"
    assert await store.kv.get("sid") == "abc"
