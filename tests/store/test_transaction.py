"""Store.transaction: several key-value and queue changes commit together or not at all."""

import pytest

from appliance.store import Overflow, QueueFullError, Store, Transaction


async def test_changes_commit_together(store: Store) -> None:
    inbox, outbox = store.queue("in"), store.queue("out")
    [first] = await store.transaction(lambda tx: tx.put(inbox, [("k1", "event")], now=1.0))
    assert first is not None

    def answer(tx: Transaction) -> list[int | None]:
        ids = tx.put(outbox, [("r1", "reply"), ("r1", "again")], now=2.0)
        assert tx.ack(inbox, [first]) == 1
        tx.set("state", "x")
        return ids

    reply_id, duplicate = await store.transaction(answer)
    assert reply_id is not None and duplicate is None
    assert await inbox.depth() == 0 and await outbox.depth() == 1
    assert await store.kv.get("state") == "x"


async def test_a_failure_rolls_everything_back(store: Store) -> None:
    inbox = store.queue("in")

    def broken(tx: Transaction) -> None:
        tx.put(inbox, ["event"], now=1.0)
        tx.set("state", "x")
        raise RuntimeError("crash half way")

    with pytest.raises(RuntimeError):
        await store.transaction(broken)
    assert await inbox.depth() == 0 and await store.kv.get("state") is None


async def test_bounds_apply_inside_a_transaction(store: Store) -> None:
    bounded = store.queue("b", max_items=2, overflow=Overflow.REJECT)
    with pytest.raises(QueueFullError):
        await store.transaction(lambda tx: tx.put(bounded, ["1", "2", "3"], now=1.0))
    assert await bounded.depth() == 0
    newest = store.queue("n", max_items=2, overflow=Overflow.DROP_OLDEST)
    await store.transaction(lambda tx: tx.put(newest, ["1", "2", "3"], now=1.0))
    assert [i.text for i in await newest.peek(5, now=2.0)] == ["2", "3"]


async def test_expire_drops_only_old_keys_under_the_prefix(store: Store) -> None:
    await store.kv.set_many({"seen:a": "100", "seen:b": "300", "seem": "1", "seen;": "1"})
    assert await store.transaction(lambda tx: tx.expire("seen:", 200.0)) == 1
    assert await store.kv.get("seen:a") is None
    assert await store.kv.get("seen:b") == "300"
    assert await store.kv.get("seem") == "1" and await store.kv.get("seen;") == "1"
