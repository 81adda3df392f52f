"""The hub under the conditions that break naive queues: outbox reads racing fresh replies,
answers that fail, a retry in a busy chat, a cancelled accept, and a platform that hangs."""

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from appliance.chat.adapter import AdapterStatus
from appliance.chat.events import InboundEvent, OutboundMessage, SendResult
from appliance.chat.hub import NOT_READY, SORRY
from appliance.chat.ledger import ChatLedger
from appliance.inference.engine import EngineNotReadyError
from appliance.skills.responder import Answer
from tests.chat.test_hub import RecordingAdapter, Running, depths_become, event, until


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chat.db"


async def test_outbox_reads_racing_fresh_replies_never_send_twice(db_path: Path) -> None:
    adapter = RecordingAdapter()
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        stop = asyncio.Event()

        async def flap() -> None:  # every READY reads the outbox, as after a reconnect
            while not stop.is_set():
                hub.set_status("fake", AdapterStatus.RESUMING)
                hub.set_status("fake", AdapterStatus.READY)
                await asyncio.sleep(0)

        flapping = asyncio.create_task(flap())
        for n in range(200):
            await hub.accept(event(n))
            await asyncio.sleep(0)
        await depths_become(hub, {"inbox": 0, "outbox": 0}, timeout_s=20)
        stop.set()
        await flapping
        await asyncio.sleep(0.3)
    sent = Counter(m.idempotency_key for m in adapter.sent)
    assert len(sent) == 200
    assert [key for key, count in sent.items() if count > 1] == []


async def test_a_failing_answer_gets_an_apology_and_chat_goes_on(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def answer(event: InboundEvent, is_owner: bool) -> Answer:
        if event.text == "message 1":
            raise ValueError("a model error")
        return Answer("greeting", 0.9, f"reply to {event.text}", 1.0)

    monkeypatch.setattr("tests.chat.test_hub.answer", answer)
    adapter = RecordingAdapter()
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        for n in range(3):
            await hub.accept(event(n))
        await until(lambda: len(adapter.sent) == 3)
        assert sorted(m.text for m in adapter.sent) == sorted(
            ["reply to message 0", SORRY, "reply to message 2"]
        )


async def test_events_wait_in_the_inbox_while_the_engine_loads(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = False

    async def answer(event: InboundEvent, is_owner: bool) -> Answer:
        if not loaded:
            raise EngineNotReadyError("loading")
        return Answer("greeting", 0.9, f"reply to {event.text}", 1.0)

    monkeypatch.setattr("tests.chat.test_hub.answer", answer)
    adapter = RecordingAdapter()
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        await hub.accept(event(1))
        await asyncio.sleep(0.3)
        assert adapter.sent == [] and (await hub.depths())["inbox"] == 1
        loaded = True
        await until(lambda: len(adapter.sent) == 1)  # the next read of the inbox answers it
        assert adapter.sent[0].text == "reply to message 1"
        assert NOT_READY not in adapter.sent[0].text


async def test_a_retried_reply_is_not_overtaken_in_a_busy_chat(db_path: Path) -> None:
    adapter = RecordingAdapter()
    adapter.failures = [SendResult.retry("server_error", retry_after_s=0.5)]
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        for n in range(12):  # a busy chat: one message every 0.15 s, each a wake-up
            await hub.accept(event(n))
            await asyncio.sleep(0.15)
        await until(lambda: len(adapter.sent) == 12, timeout_s=10)
    assert [m.text for m in adapter.sent] == [f"reply to message {n}" for n in range(12)]


async def test_an_accept_whose_caller_is_cancelled_is_still_answered(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ChatLedger._accept_all

    def slow(self: ChatLedger, tx: object, entries: list[object]) -> list[int | None]:
        time.sleep(0.1)  # an SD card's commit, on the store thread
        return original(self, tx, entries)  # type: ignore[arg-type]

    monkeypatch.setattr(ChatLedger, "_accept_all", slow)
    adapter = RecordingAdapter()
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        first = asyncio.create_task(hub.accept(event(1)))  # commits
        second = asyncio.create_task(hub.accept(event(2)))  # joins the next commit
        await asyncio.sleep(0.05)
        first.cancel()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError) and results[1] is True
        await until(lambda: len(adapter.sent) == 2)
        assert not await hub.accept(event(1)), "committed, so a redelivery is a duplicate"
    assert sorted(m.text for m in adapter.sent) == ["reply to message 1", "reply to message 2"]


class HangingAdapter(RecordingAdapter):
    platform = "slow"

    async def send(self, message: OutboundMessage) -> SendResult:
        await asyncio.Event().wait()  # a black-holed API
        raise AssertionError("unreachable")


async def test_a_hanging_platform_does_not_hold_up_another(db_path: Path) -> None:
    fast, slow = RecordingAdapter(), HangingAdapter()
    async with Running(db_path, fast, extra={"slow": slow}) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        hub.set_status("slow", AdapterStatus.READY)
        await hub.accept(InboundEvent("slow", "s1", "c", event(0).chat_kind, "alice", "hi"))
        for n in range(3):
            await hub.accept(event(n))
        await until(lambda: len(fast.sent) == 3)
        assert (await hub.depths())["outbox"] == 1  # the hanging one waits, durably
