"""The hub's offline-first queues with a recording adapter and a scripted answer."""

import asyncio
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.bootstrap import StandaloneContext
from appliance.chat.adapter import AdapterStatus
from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage, SendResult
from appliance.chat.hub import ChatHub, decode_event, encode_event, retry_delay_s
from appliance.chat.policy import PlatformPolicy
from appliance.clock import SystemClock
from appliance.skills.responder import Answer
from appliance.store import Store


class RecordingAdapter:
    platform = "fake"
    max_text_chars = 1000
    trusted = False
    connection_bound = False

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []
        self.failures: list[SendResult] = []

    async def run(self, ctx: object) -> None:
        await asyncio.Event().wait()

    async def send(self, message: OutboundMessage) -> SendResult:
        if self.failures:
            return self.failures.pop(0)
        self.sent.append(message)
        return SendResult.sent(f"m{len(self.sent)}")


@pytest.fixture
def db_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp) / "chat.db"


def event(n: int) -> InboundEvent:
    return InboundEvent("fake", f"e{n}", "chat-1", ChatKind.DIRECT, "alice", f"message {n}")


async def answer(event: InboundEvent, trusted: bool) -> Answer:
    return Answer("greeting", 0.9, f"reply to {event.text}", 1.0)


class Running:
    def __init__(
        self,
        db_path: Path,
        adapter: RecordingAdapter,
        extra: dict[str, RecordingAdapter] | None = None,
    ) -> None:
        self.db_path, self.adapter, self.extra = db_path, adapter, extra or {}

    async def __aenter__(self) -> ChatHub:
        self.store = await Store.open(self.db_path)

        async def opened() -> Store:
            return self.store

        self.hub = ChatHub(
            store=opened,
            answer=answer,
            adapters={"fake": self.adapter, **self.extra},
            clock=SystemClock(),
            policies={name: PlatformPolicy(dm_policy="open") for name in ("fake", *self.extra)},
        )
        ctx = StandaloneContext("chat")
        self.task = asyncio.create_task(self.hub.run(ctx))
        await asyncio.wait_for(ctx.is_ready.wait(), 5)
        return self.hub

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.store.close()


async def depths_become(hub: ChatHub, expected: dict[str, int], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await hub.depths() == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"queue depths are {await hub.depths()}, not {expected}")


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_event_round_trips_through_the_inbox_encoding() -> None:
    original = InboundEvent(
        "fake",
        "1",
        "c",
        ChatKind.GROUP,
        "s",
        "hé",
        mentions_bot=True,
        reply_to="0",
        ts=5.0,
        raw={"secret": "dropped"},
    )
    assert decode_event(encode_event(original).encode()) == original


def test_retry_delay_prefers_the_platform_and_backs_off_to_five_minutes() -> None:
    assert retry_delay_s(3, 2.5) == 2.5
    assert [retry_delay_s(n, None) for n in (0, 1, 2, 10)] == [1.0, 2.0, 4.0, 300.0]


async def test_replies_wait_while_the_adapter_is_down_and_survive_a_restart(db_path: Path) -> None:
    adapter = RecordingAdapter()
    async with Running(db_path, adapter) as hub:
        for n in range(3):
            assert await hub.accept(event(n))
        await depths_become(hub, {"inbox": 0, "outbox": 3})
        assert adapter.sent == []
    # The process goes away; a new one on the same database delivers once the adapter is up.
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        await until(lambda: len(adapter.sent) == 3)
        assert [m.text for m in adapter.sent] == [f"reply to message {n}" for n in range(3)]
        assert {m.idempotency_key for m in adapter.sent} == {f"reply:fake:e{n}" for n in range(3)}
        await depths_become(hub, {"inbox": 0, "outbox": 0})


async def test_a_repeated_event_is_answered_once(db_path: Path) -> None:
    adapter = RecordingAdapter()
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        assert await hub.accept(event(1))
        assert not await hub.accept(event(1))
        await until(lambda: len(adapter.sent) == 1)
        await asyncio.sleep(0.2)
    async with Running(db_path, adapter) as hub:
        assert not await hub.accept(event(1)), "dedupe must survive a restart"
    assert len(adapter.sent) == 1


async def test_a_429_is_retried_after_the_platforms_retry_after(db_path: Path) -> None:
    adapter = RecordingAdapter()
    adapter.failures = [SendResult.retry("rate_limited", retry_after_s=0.3)]
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        await hub.accept(event(7))
        await asyncio.sleep(0.2)
        assert adapter.sent == []
        await until(lambda: len(adapter.sent) == 1, timeout_s=3)


async def test_a_permanent_failure_is_dropped_not_retried(db_path: Path) -> None:
    adapter = RecordingAdapter()
    adapter.failures = [SendResult.failed("chat_not_found")]
    async with Running(db_path, adapter) as hub:
        hub.set_status("fake", AdapterStatus.READY)
        await hub.accept(event(8))
        await until(lambda: not adapter.failures)
        await asyncio.sleep(0.2)
        assert (await hub.depths())["outbox"] == 0 and adapter.sent == []
