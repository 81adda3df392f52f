import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.store import DurableQueue, Overflow, PutResult, QueueFullError, Store
from tests.store.conftest import NOW


async def _payloads(store: Store, name: str, *, now: float = NOW) -> list[bytes]:
    return [item.payload for item in await store.queue(name).peek(1000, now=now)]


async def test_items_come_out_oldest_first_with_their_metadata(store: Store) -> None:
    inbox = store.queue("inbox")
    for text in ("one", "two", "three"):
        await inbox.put(text, now=NOW)
    await inbox.put(b"\x00\xff", now=NOW + 1, key="evt-4")
    items = await inbox.peek(10, now=NOW + 1)
    assert [item.payload for item in items] == [b"one", b"two", b"three", b"\x00\xff"]
    assert items[0].text == "one"
    assert (items[0].attempts, items[0].enqueued_at, items[0].key) == (0, NOW, None)
    assert (items[3].key, items[3].enqueued_at) == ("evt-4", NOW + 1)
    assert [item.payload for item in await inbox.peek(2, now=NOW)] == [b"one", b"two"]


async def test_peek_leaves_items_queued_until_acked(store: Store) -> None:
    inbox = store.queue("inbox")
    await inbox.put_many(["a", "b", "c"], now=NOW)
    first, second = await inbox.peek(2, now=NOW)
    assert await inbox.depth() == 3
    assert await inbox.ack([first.id, second.id]) == 2
    assert await inbox.ack([first.id]) == 0
    assert await _payloads(store, "inbox") == [b"c"]


async def test_an_idempotency_key_is_queued_once(store: Store) -> None:
    inbox = store.queue("inbox")
    assert await inbox.put("hello", now=NOW, key="discord:1") is True
    assert await inbox.put("hello again", now=NOW, key="discord:1") is False
    assert await store.queue("outbox").put("reply", now=NOW, key="discord:1") is True
    assert await _payloads(store, "inbox") == [b"hello"]


async def test_a_key_may_be_queued_again_after_its_item_is_acked(store: Store) -> None:
    inbox = store.queue("inbox")
    await inbox.put("hello", now=NOW, key="k")
    (item,) = await inbox.peek(1, now=NOW)
    await inbox.ack([item.id])
    assert await inbox.put("hello", now=NOW, key="k") is True


async def test_put_many_reports_duplicates_in_one_batch(store: Store) -> None:
    outbox = store.queue("outbox")
    await outbox.put("x", now=NOW, key="a")
    result = await outbox.put_many([("a", "dup"), ("b", "new"), ("b", "dup"), "plain"], now=NOW)
    assert result == PutResult(added=2, duplicates=2, dropped=0)
    assert await _payloads(store, "outbox") == [b"x", b"new", b"plain"]


async def test_nack_counts_the_attempt_and_delays_the_item(store: Store) -> None:
    outbox = store.queue("outbox")
    await outbox.put_many(["first", "second"], now=NOW)
    first, _ = await outbox.peek(2, now=NOW)
    assert await outbox.nack(first.id, not_before=NOW + 30) is True
    assert await _payloads(store, "outbox", now=NOW + 29) == [b"second"]
    retried, _ = await outbox.peek(2, now=NOW + 30)
    assert (retried.id, retried.attempts, retried.not_before) == (first.id, 1, NOW + 30)
    assert await outbox.depth() == 2
    assert await outbox.nack(9999, not_before=NOW) is False


async def test_ack_and_nack_only_touch_their_own_queue(store: Store) -> None:
    await store.queue("inbox").put("mine", now=NOW)
    (item,) = await store.queue("inbox").peek(1, now=NOW)
    assert await store.queue("outbox").ack([item.id]) == 0
    assert await store.queue("outbox").nack(item.id, not_before=NOW + 9) is False
    assert await _payloads(store, "inbox") == [b"mine"]


async def test_drop_oldest_keeps_the_newest_items(store: Store) -> None:
    telemetry = store.queue("telemetry", max_items=3, overflow=Overflow.DROP_OLDEST)
    for n in range(4):
        await telemetry.put(f"h{n}", now=NOW)
    result = await telemetry.put_many(["h4", "h5", "h6", "h7"], now=NOW)
    assert result == PutResult(added=4, duplicates=0, dropped=4)
    assert telemetry.dropped == 5
    assert await telemetry.depth() == 3
    assert await _payloads(store, "telemetry") == [b"h5", b"h6", b"h7"]


async def test_reject_refuses_a_batch_that_does_not_fit(store: Store) -> None:
    chat = store.queue("outbox", max_items=2, overflow=Overflow.REJECT)
    await chat.put("one", now=NOW, key="1")
    with pytest.raises(QueueFullError) as caught:
        await chat.put_many(["two", "three"], now=NOW)
    assert caught.value.code == "queue_full"
    assert "nothing was added" in str(caught.value)
    assert await chat.put("two", now=NOW) is True
    with pytest.raises(QueueFullError):
        await chat.put("three", now=NOW)
    assert await chat.put("one again", now=NOW, key="1") is False
    assert await _payloads(store, "outbox") == [b"one", b"two"]


async def test_depth_counts_each_queue_separately(store: Store) -> None:
    await store.queue("inbox").put_many(["a", "b"], now=NOW)
    await store.queue("outbox").put("c", now=NOW)
    assert await store.queue("inbox").depth() == 2
    assert await store.queue("outbox").depth() == 1
    assert await store.queue("unused").depth() == 0


async def test_items_survive_reopen(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.queue("outbox").put_many([("r1", "reply one"), ("r2", "reply two")], now=NOW)
        (first, _) = await store.queue("outbox").peek(2, now=NOW)
        await store.queue("outbox").nack(first.id, not_before=NOW + 5)
    async with await Store.open(db_path) as store:
        items = await store.queue("outbox").peek(10, now=NOW + 5)
    assert [(i.key, i.payload, i.attempts) for i in items] == [
        ("r1", b"reply one", 1),
        ("r2", b"reply two", 0),
    ]


async def test_ids_are_never_reused_after_the_queue_empties(store: Store) -> None:
    queue = store.queue("inbox")
    await queue.put("a", now=NOW)
    (old,) = await queue.peek(1, now=NOW)
    await queue.ack([old.id])
    await queue.put("b", now=NOW)
    assert await queue.ack([old.id]) == 0
    assert await queue.depth() == 1


async def test_bad_arguments_are_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        store.queue("inbox", max_items=0)
    with pytest.raises(ValueError):
        await store.queue("inbox").peek(0, now=NOW)


# A property: any sequence of puts and acks on a bounded queue matches a plain list.
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.one_of(st.none(), st.sampled_from("abcde"))),
        st.tuples(st.just("ack"), st.integers(min_value=1, max_value=4)),
    ),
    max_size=25,
)


async def _check_against_model(
    path: Path, ops: list[tuple[str, object]], max_items: int, overflow: Overflow
) -> None:
    model: list[tuple[str | None, bytes]] = []
    async with await Store.open(path) as store:
        queue = store.queue("q", max_items=max_items, overflow=overflow)
        for n, (op, arg) in enumerate(ops):
            if op == "put":
                await _put(queue, model, arg if isinstance(arg, str) else None, f"p{n}".encode())
            else:
                assert isinstance(arg, int)
                items = await queue.peek(arg, now=NOW)
                assert [(i.key, i.payload) for i in items] == model[:arg]
                await queue.ack([item.id for item in items])
                del model[:arg]
            assert await queue.depth() == len(model)
        assert [(i.key, i.payload) for i in await queue.peek(100, now=NOW)] == model


async def _put(
    queue: DurableQueue, model: list[tuple[str | None, bytes]], key: str | None, data: bytes
) -> None:
    duplicate = key is not None and any(k == key for k, _ in model)
    full = not duplicate and len(model) >= queue.max_items
    if full and queue.overflow is Overflow.REJECT:
        with pytest.raises(QueueFullError):
            await queue.put(data, now=NOW, key=key)
        return
    assert await queue.put(data, now=NOW, key=key) is not duplicate
    if not duplicate:
        model.append((key, data))
        del model[: max(0, len(model) - queue.max_items)]


@settings(max_examples=50, deadline=None)
@given(
    ops=_OPS,
    max_items=st.integers(min_value=1, max_value=6),
    overflow=st.sampled_from(Overflow),
)
def test_any_put_ack_sequence_matches_a_list_model(
    ops: list[tuple[str, object]], max_items: int, overflow: Overflow
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.db"
        asyncio.run(_check_against_model(path, ops, max_items, overflow))
