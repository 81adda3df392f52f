"""ChatLedger: accepts that arrive together share one commit; dedupe and pairing state."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage
from appliance.chat.ledger import PAIRING_KEY, ChatLedger
from appliance.chat.pairing import Pairing
from appliance.store import Store


def event(n: int) -> InboundEvent:
    return InboundEvent("fake", f"e{n}", "c", ChatKind.DIRECT, "s", f"text {n}")


class CountingStore(Store):
    """A store that counts its transactions."""

    transactions = 0

    async def transaction(self, work: Any) -> Any:
        self.transactions += 1
        return await super().transaction(work)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = await Store.open(tmp_path / "chat.db")
    counting = CountingStore(opened._database)
    yield counting
    await counting.close()


async def test_concurrent_accepts_share_commits_and_keep_order(store: CountingStore) -> None:
    ledger = ChatLedger(store)
    ids = await asyncio.gather(*(ledger.accept(event(n), 1.0) for n in range(50)))
    assert all(i is not None for i in ids)
    assert ids == sorted(ids), "inbox order follows the order of accept() calls"
    assert store.transactions < 10, f"{store.transactions} commits for 50 accepts"
    pending = await ledger.pending_events(100, 2.0)
    assert [e.event_id for _, e in pending] == [f"e{n}" for n in range(50)]


async def test_a_duplicate_inside_one_commit_is_accepted_once(store: CountingStore) -> None:
    ledger = ChatLedger(store)
    first, second = await asyncio.gather(ledger.accept(event(1), 1.0), ledger.accept(event(1), 1.0))
    assert (first is None) != (second is None)
    assert await ledger.inbox.depth() == 1


async def test_answering_queues_replies_and_drops_the_events_in_one_commit(
    store: CountingStore,
) -> None:
    ledger = ChatLedger(store)
    item_id = await ledger.accept(event(1), 1.0)
    assert item_id is not None
    before = store.transactions
    pairing = Pairing()
    pairing.request("fake", "s", 1.0)
    reply = OutboundMessage("c", "hello", idempotency_key="reply:fake:e1")
    [reply_id] = await ledger.answered([item_id], [("fake", reply)], 2.0, pairing)
    assert store.transactions == before + 1
    assert reply_id is not None
    assert await ledger.depths(["fake", "other"]) == {"inbox": 0, "outbox": 1}
    [(_, queued)] = await ledger.outbox("fake").due(5, 3.0)
    assert queued == reply
    assert (await ledger.load_pairing()).to_dict() == pairing.to_dict()


async def test_unreadable_pairing_state_is_kept_aside_not_lost(store: CountingStore) -> None:
    await store.kv.set(PAIRING_KEY, "{not json")
    ledger = ChatLedger(store)
    assert (await ledger.load_pairing()).to_dict() == Pairing().to_dict()
    assert await store.kv.get(PAIRING_KEY + ".unreadable") == "{not json"
