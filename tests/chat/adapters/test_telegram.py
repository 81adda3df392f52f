"""The Telegram adapter against the fake Bot API on loopback; backoff runs on a FakeClock."""

import asyncio
import logging
import random
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.bootstrap import StandaloneContext
from appliance.chat.adapter import AdapterContext, AdapterStatus, adapter_class
from appliance.chat.adapters.telegram import TelegramAdapter
from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage, SendResult
from appliance.chat.hub import ChatHub
from appliance.chat.policy import PlatformPolicy
from appliance.chat.service import AdapterService
from appliance.clock import SystemClock
from appliance.config import TelegramAdapterConfig
from appliance.skills.responder import Answer
from appliance.store import Store
from tests.fakes.clock import FakeClock
from tests.fakes.telegram import TOKEN, FakeTelegram, Reply, Watch

POLL_TIMEOUT_S = 2


class WatchedClock(FakeClock):
    """A FakeClock that tells the watch whenever someone starts sleeping on it."""

    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch
        self.delays: list[float] = []

    async def sleep(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        self.watch.poke()
        await super().sleep(delay_s)


class MemoryKv:
    def __init__(self, watch: Watch) -> None:
        self.data: dict[str, str] = {}
        self.watch = watch

    async def get(self, key: str) -> str | None:
        return self.data.get(key)

    async def set(self, key: str, value: str) -> None:
        self.data[key] = value
        self.watch.poke()


class Run:
    """One adapter run with a context that records what the adapter did."""

    def __init__(self, api: FakeTelegram, clock: WatchedClock, kv: MemoryKv, **cfg: Any) -> None:
        self.watch = api.watch
        self.events: list[InboundEvent] = []
        self.statuses: list[tuple[AdapterStatus, str]] = []
        self.emit_error: Exception | None = None
        settings = {"token": TOKEN, "api_base": api.base_url, "poll_timeout_s": POLL_TIMEOUT_S}
        self.adapter = TelegramAdapter(
            TelegramAdapterConfig(type="telegram", **{**settings, **cfg}),
            clock=clock,
            rng=random.Random(7),
        )
        ctx = AdapterContext(
            "telegram",
            StandaloneContext("chat:telegram"),
            emit=self._emit,
            status=self._status,
            kv=kv,
        )
        self.task = asyncio.create_task(self.adapter.run(ctx))
        self.task.add_done_callback(lambda _: self.watch.poke())

    async def _emit(self, event: InboundEvent) -> None:
        if self.emit_error is not None:
            raise self.emit_error
        self.events.append(event)
        self.watch.poke()

    def _status(self, platform: str, status: AdapterStatus, detail: str) -> None:
        assert platform == "telegram"
        self.statuses.append((status, detail))
        self.watch.poke()

    @property
    def status(self) -> AdapterStatus | None:
        return self.statuses[-1][0] if self.statuses else None

    async def until(self, predicate: Any, timeout_s: float = 5.0) -> None:
        await self.watch.until(lambda: predicate() or self.task.done(), timeout_s)
        if self.task.done() and not predicate():
            self.task.result()  # surface the adapter's exception
            raise AssertionError("the adapter stopped before the condition was met")

    async def until_ready(self) -> None:
        await self.until(lambda: self.status is AdapterStatus.READY)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
def db_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp) / "chat.db"


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def clock(watch: Watch) -> WatchedClock:
    return WatchedClock(watch)


@pytest.fixture
def kv(watch: Watch) -> MemoryKv:
    return MemoryKv(watch)


@pytest.fixture
async def api(watch: Watch) -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(watch=watch) as fake:
        yield fake


@pytest.fixture
async def running(api: FakeTelegram, clock: WatchedClock, kv: MemoryKv) -> AsyncIterator[Run]:
    run = Run(api, clock, kv)
    yield run
    await run.stop()


async def back_off(run: Run, clock: WatchedClock) -> float:
    """Wait until the adapter sleeps on the clock, then let that sleep end; its length."""
    await run.until(lambda: clock.sleepers > 0)
    delay_s = clock.delays[-1]
    await clock.advance(delay_s)
    return delay_s


def test_the_adapter_is_registered_with_its_limits() -> None:
    assert adapter_class("telegram") is TelegramAdapter
    assert (TelegramAdapter.platform, TelegramAdapter.max_text_chars) == ("telegram", 4096)
    assert TelegramAdapter.trusted is False


async def test_a_private_message_and_a_group_mention_are_emitted(
    api: FakeTelegram, running: Run
) -> None:
    private = api.push("update_private_text")
    mention = api.push("update_group_mention")
    await running.until(lambda: len(running.events) == 2)
    direct, group = running.events
    assert direct.event_id == f"111111111:{private['message']['message_id']}"
    assert (direct.chat_kind, direct.text, direct.sender_id) == (
        ChatKind.DIRECT,
        "how hot is the cpu?",
        "111111111",
    )
    assert group.event_id == f"-1001234567890:{mention['message']['message_id']}"
    assert (group.chat_kind, group.mentions_bot, group.text) == (
        ChatKind.GROUP,
        True,
        "what is the temperature?",
    )
    assert running.status is AdapterStatus.READY
    methods = [call.method for call in api.calls]
    assert methods[:2] == ["getMe", "deleteWebhook"]
    await running.until(lambda: len(api.polls()) >= 2)
    polls = api.polls()
    assert polls[0].params["timeout"] == 0  # the first poll proves the connection at once
    assert {p.params["timeout"] for p in polls[1:]} == {POLL_TIMEOUT_S}
    assert all(p.params["allowed_updates"] == ["message"] for p in polls)


async def test_ignored_updates_are_confirmed_without_events(
    api: FakeTelegram, running: Run, kv: MemoryKv
) -> None:
    edit = api.push("update_edited_message")
    photo = api.push("update_photo")
    text = api.push("update_private_text")
    await running.until(lambda: len(running.events) == 1)
    await running.until(lambda: kv.data.get("chat:telegram:offset") == str(text["update_id"] + 1))
    assert running.events[0].text == "how hot is the cpu?"
    assert edit["update_id"] < photo["update_id"] < text["update_id"]


async def test_the_offset_is_persisted_and_a_restart_does_not_re_emit(
    api: FakeTelegram, clock: WatchedClock, kv: MemoryKv
) -> None:
    first = Run(api, clock, kv)
    old = api.push("update_private_text")
    await first.until(lambda: kv.data.get("chat:telegram:offset") == str(old["update_id"] + 1))
    await first.stop()

    polls_before = len(api.polls())
    second = Run(api, clock, kv)
    try:
        new = api.push("update_group_mention")
        await second.until(lambda: len(second.events) == 1)
        await second.until(lambda: len(api.polls()) > polls_before + 1)
        assert second.events[0].event_id.endswith(f":{new['message']['message_id']}")
        # The restarted adapter confirms what the first one delivered, from its first poll on.
        assert api.polls()[polls_before].params["offset"] == old["update_id"] + 1
        assert [e.event_id for e in first.events] != [e.event_id for e in second.events]
    finally:
        await second.stop()


async def test_a_crash_before_the_offset_is_saved_re_emits_the_same_event(
    api: FakeTelegram, clock: WatchedClock, kv: MemoryKv
) -> None:
    update = api.push("update_private_text")
    crashing = Run(api, clock, kv)
    crashing.emit_error = RuntimeError("inbox write failed")
    with pytest.raises(RuntimeError, match="inbox write failed"):
        await asyncio.wait_for(crashing.task, 5)
    assert "chat:telegram:offset" not in kv.data

    restarted = Run(api, clock, kv)
    try:
        await restarted.until(lambda: len(restarted.events) == 1)
        message_id = update["message"]["message_id"]
        assert restarted.events[0].event_id == f"111111111:{message_id}"  # the hub dedupes on it
        await restarted.until(
            lambda: kv.data.get("chat:telegram:offset") == str(update["update_id"] + 1)
        )
    finally:
        await restarted.stop()


async def test_a_409_conflict_is_its_own_status_then_polling_recovers(
    api: FakeTelegram, running: Run, clock: WatchedClock
) -> None:
    api.script("getUpdates", Reply.of("error_409_poller"))
    await running.until(lambda: running.status is AdapterStatus.DEGRADED)
    detail = running.statuses[-1][1]
    assert detail.startswith("conflict: Conflict: terminated by other getUpdates request")
    assert await back_off(running, clock) >= 5.0  # slow, or two pollers keep evicting each other
    await running.until_ready()
    update = api.push("update_private_text")
    await running.until(lambda: len(running.events) == 1)
    assert running.events[0].event_id.endswith(f":{update['message']['message_id']}")
    conflicted, after = api.polls()[0], api.polls()[1]
    assert conflicted.peer != after.peer  # a fresh TCP connection after the 409


async def test_a_webhook_is_deleted_at_start(api: FakeTelegram, running: Run) -> None:
    api.webhook_url = "https://example.invalid/hook"
    await running.until_ready()
    assert api.webhook_url == ""


async def test_a_kept_webhook_shows_as_a_conflict(
    api: FakeTelegram, clock: WatchedClock, kv: MemoryKv
) -> None:
    api.webhook_url = "https://example.invalid/hook"
    run = Run(api, clock, kv, delete_webhook=False)
    try:
        await run.until(lambda: run.status is AdapterStatus.DEGRADED)
        assert "webhook is active" in run.statuses[-1][1]
        assert run.statuses[-1][1].startswith("conflict:")
        api.webhook_url = ""  # the operator deleted it
        await back_off(run, clock)
        await run.until_ready()
    finally:
        await run.stop()


async def test_two_pollers_on_one_token_evict_each_other_with_409(
    api: FakeTelegram, running: Run, clock: WatchedClock, kv: MemoryKv
) -> None:
    await running.until(lambda: len(api.polls()) >= 2)  # holding a long poll
    other = Run(api, clock, MemoryKv(api.watch))
    try:
        await running.until(
            lambda: any(d.startswith("conflict:") for _, d in running.statuses + other.statuses)
        )
    finally:
        await other.stop()


async def test_a_429_on_send_asks_the_hub_to_retry_after(api: FakeTelegram, running: Run) -> None:
    api.push("update_group_mention")
    await running.until(lambda: len(running.events) == 1)
    event = running.events[0]
    api.script("sendMessage", Reply.of("error_429"))
    reply = OutboundMessage(event.chat_id, "48 °C", reply_to=event.event_id)
    assert await running.adapter.send(reply) == SendResult.retry("rate_limited", 7.0)
    result = await running.adapter.send(reply)
    assert result.ok and result.message_id is not None
    [sent] = api.sent
    assert sent["chat_id"] == -1001234567890 and sent["text"] == "48 °C"
    assert sent["reply_parameters"]["message_id"] == int(event.event_id.split(":")[-1])


async def test_send_works_before_run_and_reports_lasting_failures(api: FakeTelegram) -> None:
    adapter = TelegramAdapter(
        TelegramAdapterConfig(type="telegram", token=TOKEN, api_base=api.base_url)
    )
    api.known_chats.add(111111111)
    assert (await adapter.send(OutboundMessage("111111111", "hi"))).ok
    assert await adapter.send(OutboundMessage("999", "hi")) == SendResult.failed("chat_not_found")
    api.blocked_chats.add(111111111)
    assert await adapter.send(OutboundMessage("111111111", "hi")) == SendResult.failed(
        "bot_blocked"
    )
    calls = len(api.calls)
    assert await adapter.send(OutboundMessage("111111111", "x" * 4097)) == SendResult.failed(
        "too_long"
    )
    assert len(api.calls) == calls  # refused locally


async def test_send_while_the_server_is_away_is_retried(api: FakeTelegram) -> None:
    adapter = TelegramAdapter(
        TelegramAdapterConfig(type="telegram", token=TOKEN, api_base=api.base_url)
    )
    await api.go_down("refused")
    result = await adapter.send(OutboundMessage("111111111", "hi"))
    assert (result.retryable, result.error_code) == (True, "unreachable")
    await api.come_back()
    await api.go_down("502")
    assert await adapter.send(OutboundMessage("111111111", "hi")) == SendResult.retry(
        "server_error"
    )


@pytest.mark.parametrize("mode", ["refused", "502"])
async def test_the_server_vanishing_degrades_then_recovers_with_no_update_lost(
    api: FakeTelegram,
    running: Run,
    clock: WatchedClock,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    first = api.push("update_private_text")
    await running.until(lambda: len(running.events) == 1)
    await api.go_down(mode)
    await running.until(lambda: running.status is AdapterStatus.DEGRADED)
    during = api.push("update_group_mention")  # arrives while the appliance cannot poll
    delays = [await back_off(running, clock) for _ in range(4)]
    assert delays == sorted(delays) and delays[-1] > delays[0]  # exponential backoff
    assert running.status is AdapterStatus.DEGRADED
    await api.come_back()
    await back_off(running, clock)
    await running.until_ready()
    await running.until(lambda: len(running.events) == 2)
    after = api.push("update_group_command")
    await running.until(lambda: len(running.events) == 3)
    ids = [e.event_id.split(":")[-1] for e in running.events]
    assert ids == [str(u["message"]["message_id"]) for u in (first, during, after)]
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in caplog.text


async def test_a_refused_token_fails_without_polling(
    api: FakeTelegram, clock: WatchedClock, kv: MemoryKv
) -> None:
    api.token = "987654321:someone-else-entirely-aaaaaaaaaaaaaaa"
    run = Run(api, clock, kv)
    assert await asyncio.wait_for(run.task, 5) is None  # returns: a retry cannot fix a token
    status, detail = run.statuses[-1]
    assert status is AdapterStatus.FAILED and "token" in detail
    assert [call.method for call in api.calls] == ["getMe"]
    assert clock.sleepers == 0


async def test_a_token_revoked_while_polling_stops_polling(api: FakeTelegram, running: Run) -> None:
    await running.until_ready()
    api.script("getUpdates", Reply.of("error_401"))
    api.push("update_private_text")  # ends the held poll; the next one gets the 401
    await asyncio.wait_for(running.task, 5)  # returned: no poll after the 401
    assert running.status is AdapterStatus.FAILED
    assert "401" in running.statuses[-1][1]


async def test_malformed_responses_are_skipped_without_a_crash(
    api: FakeTelegram, running: Run, clock: WatchedClock, kv: MemoryKv
) -> None:
    api.script("getUpdates", Reply.raw(b"<html>captive portal</html>"), Reply.raw(b'{"ok": 1}'))
    await running.until(lambda: running.status is AdapterStatus.DEGRADED)
    assert running.statuses[-1][1].startswith("malformed:")
    await back_off(running, clock)
    await back_off(running, clock)
    await running.until_ready()
    broken = api.push({"update_id": 0, "message": {"message_id": "x", "chat": "nope"}})
    good = api.push("update_private_text")
    await running.until(lambda: len(running.events) == 1)
    assert running.events[0].event_id.endswith(f":{good['message']['message_id']}")
    await running.until(lambda: kv.data.get("chat:telegram:offset") == str(good["update_id"] + 1))
    assert broken["update_id"] < good["update_id"]
    assert not running.task.done()


async def test_end_to_end_through_the_hub_a_mention_gets_a_threaded_reply(
    api: FakeTelegram, clock: WatchedClock, db_path: Path
) -> None:
    store = await Store.open(db_path)

    async def opened() -> Store:
        return store

    async def kv() -> Any:
        return store.kv

    async def answer(event: InboundEvent, is_owner: bool) -> Answer:
        return Answer("greeting", 0.9, f"reply to {event.text}", 1.0)

    adapter = TelegramAdapter(
        TelegramAdapterConfig(
            type="telegram", token=TOKEN, api_base=api.base_url, poll_timeout_s=POLL_TIMEOUT_S
        ),
        clock=clock,
    )
    hub = ChatHub(
        store=opened,
        answer=answer,
        adapters={"telegram": adapter},
        clock=SystemClock(),
        policies={"telegram": PlatformPolicy("open", "open", frozenset({"*"}))},
    )
    tasks = [
        asyncio.create_task(hub.run(StandaloneContext("chat"))),
        asyncio.create_task(AdapterService(adapter, hub, kv).run(StandaloneContext("chat:tg"))),
    ]
    try:
        mention = api.push("update_group_mention")
        api.push("update_group_plain")  # not addressed to the bot: no reply
        direct = api.push("update_private_text")
        await api.watch.until(lambda: len(api.sent) == 2)
        to_group, to_alice = api.sent
        assert to_group["chat_id"] == -1001234567890
        assert to_group["text"] == "reply to what is the temperature?"
        assert to_group["reply_parameters"]["message_id"] == mention["message"]["message_id"]
        assert to_alice["chat_id"] == 111111111
        assert to_alice["reply_parameters"]["message_id"] == direct["message"]["message_id"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
