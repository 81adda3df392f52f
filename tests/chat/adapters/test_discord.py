"""The Discord adapter against the fake Discord on loopback, with a fake clock for heartbeats."""

import asyncio
import itertools
import json
import logging
import random
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from appliance.bootstrap import StandaloneContext
from appliance.chat.adapter import AdapterContext, AdapterStatus, KeyValueStore
from appliance.chat.adapters.discord import DiscordAdapter
from appliance.chat.adapters.discord_protocol import identify, nonce
from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage, SendResult
from appliance.chat.hub import ChatHub
from appliance.chat.policy import PlatformPolicy
from appliance.chat.service import AdapterService
from appliance.clock import SystemClock
from appliance.config import DiscordAdapterConfig
from appliance.skills.responder import Answer
from appliance.store import Store
from tests.fakes.clock import FakeClock
from tests.fakes.discord import (
    BOT_ID,
    DM_CHANNEL,
    GUILD_CHANNEL,
    TOKEN,
    FakeDiscord,
    recorded,
)

INTERVAL_S = 41.25


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for loopback I/O to make `predicate` true (real time passes only for the sockets)."""
    for _ in range(int(timeout_s / 0.002)):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


async def advance_until(clock: FakeClock, predicate: Callable[[], bool], step_s: float) -> None:
    """Move fake time in steps, letting loopback I/O finish in between, until `predicate`."""
    for _ in range(200):
        if predicate():
            return
        await clock.advance(step_s)
        for _ in range(5):
            await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


@dataclass
class Recorder:
    """What the adapter emitted, the statuses it set and what it stored."""

    events: list[InboundEvent] = field(default_factory=list)
    statuses: list[tuple[AdapterStatus, str]] = field(default_factory=list)
    kv: dict[str, str] = field(default_factory=dict)

    async def emit(self, event: InboundEvent) -> None:
        self.events.append(event)

    def status(self, platform: str, status: AdapterStatus, detail: str) -> None:
        self.statuses.append((status, detail))

    async def get(self, key: str) -> str | None:
        return self.kv.get(key)

    async def set(self, key: str, value: str) -> None:
        self.kv[key] = value

    @property
    def last(self) -> AdapterStatus | None:
        return self.statuses[-1][0] if self.statuses else None

    def context(self) -> AdapterContext:
        return AdapterContext(
            "discord",
            StandaloneContext("chat:discord"),
            emit=self.emit,
            status=self.status,
            kv=self,
        )


@dataclass
class Running:
    fake: FakeDiscord
    clock: FakeClock
    adapter: DiscordAdapter
    recorder: Recorder
    task: asyncio.Task[None]

    @property
    def ready(self) -> bool:
        return self.recorder.last is AdapterStatus.READY


def config(fake: FakeDiscord, **changes: Any) -> DiscordAdapterConfig:
    return DiscordAdapterConfig(
        type="discord", token=changes.pop("token", TOKEN), api_base=fake.api_base, **changes
    )


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(now=clock.monotonic) as server:
        yield server


@pytest.fixture
async def start(fake: FakeDiscord, clock: FakeClock) -> AsyncIterator[Callable[..., Running]]:
    tasks: list[asyncio.Task[None]] = []

    def starter(recorder: Recorder | None = None, **changes: Any) -> Running:
        recorder = recorder or Recorder()
        adapter = DiscordAdapter(config(fake, **changes), clock=clock, rng=random.Random(7))
        task = asyncio.create_task(adapter.run(recorder.context()))
        tasks.append(task)
        return Running(fake, clock, adapter, recorder, task)

    yield starter
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def running(start: Callable[..., Running]) -> Running:
    run = start()
    await eventually(lambda: run.ready)
    return run


async def test_identify_asks_for_the_documented_intents_and_reaches_ready(
    running: Running,
) -> None:
    [identify] = running.fake.identifies
    assert identify["token"] == TOKEN
    assert identify["intents"] == (1 << 9) | (1 << 12) | (1 << 15)
    assert running.fake.connections == ["/?v=10&encoding=json&compress=zlib-stream"]
    assert running.fake.user_agents[0].startswith("DiscordBot (")
    stored = json.loads(running.recorder.kv["chat:discord:session"])
    assert stored["resume_url"] == running.fake.resume_url and stored["seq"] == 1


async def test_without_the_content_intent_it_is_not_requested(
    start: Callable[..., Running],
) -> None:
    run = start(message_content_intent=False)
    await eventually(lambda: run.ready)
    assert run.fake.identifies[0]["intents"] == (1 << 9) | (1 << 12)


async def test_without_compression_frames_are_plain_json(start: Callable[..., Running]) -> None:
    run = start(zlib_stream=False)
    await eventually(lambda: run.ready)
    message = await run.fake.inject_message("plain")
    await eventually(lambda: len(run.recorder.events) == 1)
    assert run.fake.connections == ["/?v=10&encoding=json"]
    assert run.recorder.events[0].event_id == message["id"]


async def test_a_corrupt_zlib_stream_replaces_the_connection_and_resumes(running: Running) -> None:
    fake = running.fake
    await fake.corrupt_stream()
    missed = await fake.inject_message("sent while the stream was broken")
    await advance_until(running.clock, lambda: fake.resumes != [], step_s=0.5)
    await eventually(lambda: len(running.recorder.events) == 1)
    assert running.recorder.events[0].event_id == missed["id"]
    assert len(fake.identifies) == 1


async def test_a_dm_and_a_guild_mention_are_emitted(running: Running) -> None:
    dm = await running.fake.inject_message("hello there")
    mention = await running.fake.inject_message(
        "what is the temperature?", guild=True, mention_bot=True
    )
    chatter = await running.fake.inject_message("just chatting", guild=True)
    await running.fake.inject_message("beep", bot_author=True)
    await running.fake.inject_message("talking to myself", author_id=BOT_ID)
    await eventually(lambda: len(running.recorder.events) == 3)
    first, second, third = running.recorder.events
    assert (first.event_id, first.chat_id, first.chat_kind) == (
        dm["id"],
        DM_CHANNEL,
        ChatKind.DIRECT,
    )
    assert first.text == "hello there" and first.sender_id == dm["author"]["id"]
    assert (second.event_id, second.chat_id) == (mention["id"], GUILD_CHANNEL)
    assert second.chat_kind is ChatKind.GROUP and second.mentions_bot
    assert second.text == "what is the temperature?"
    assert third.event_id == chatter["id"] and not third.mentions_bot  # the hub gates it


async def test_a_resend_with_the_same_key_does_not_post_twice(running: Running) -> None:
    message = OutboundMessage(
        GUILD_CHANNEL, "The CPU is at 48 °C.", reply_to="1310000000000000123", idempotency_key="k1"
    )
    first = await running.adapter.send(message)
    again = await running.adapter.send(message)
    assert first.ok and first.message_id is not None
    assert again == first
    [created] = running.fake.messages[GUILD_CHANNEL]
    assert created["content"] == "The CPU is at 48 °C."
    assert created["message_reference"]["message_id"] == "1310000000000000123"
    for body in running.fake.posts:
        assert body["nonce"] == nonce("k1") and len(body["nonce"]) <= 25
        assert body["enforce_nonce"] is True
        assert body["allowed_mentions"] == {"parse": []}
    other = await running.adapter.send(OutboundMessage(GUILD_CHANNEL, "b", idempotency_key="k2"))
    assert other.ok and other.message_id != first.message_id


async def test_send_works_before_run_with_a_session_of_its_own(fake: FakeDiscord) -> None:
    adapter = DiscordAdapter(config(fake), clock=FakeClock())
    result = await adapter.send(OutboundMessage(DM_CHANNEL, "hi", idempotency_key="x"))
    assert result.ok and [m["content"] for m in fake.messages[DM_CHANNEL]] == ["hi"]


async def test_heartbeats_carry_the_last_sequence(running: Running) -> None:
    await running.fake.inject_message("hello")
    await eventually(lambda: len(running.recorder.events) == 1)
    await advance_until(running.clock, lambda: len(running.fake.heartbeats) >= 2, step_s=5.0)
    assert running.fake.heartbeats[:2] == [2, 2]
    assert json.loads(running.recorder.kv["chat:discord:session"])["seq"] == 2


async def test_a_zombie_connection_resumes_and_loses_nothing(running: Running) -> None:
    fake = running.fake
    before = [(await fake.inject_message(f"m{i}"))["id"] for i in range(2)]
    await eventually(lambda: len(running.recorder.events) == 2)
    fake.stall()  # the link is dead: Discord keeps the dispatches for a RESUME
    during = [(await fake.inject_message(f"lost{i}"))["id"] for i in range(3)]
    await advance_until(running.clock, lambda: fake.client_close_codes != [], step_s=5.0)
    assert fake.client_close_codes[0] not in (1000, 1001)  # a 1000 would end the session
    await advance_until(running.clock, lambda: running.ready and fake.resumes != [], step_s=0.5)
    assert len(fake.identifies) == 1
    [resume] = fake.resumes
    assert resume["seq"] == 3 and resume["token"] == TOKEN
    assert fake.connections[-1].startswith("/resume?v=10")
    after = (await fake.inject_message("after"))["id"]
    await eventually(lambda: len(running.recorder.events) == 6)
    assert [e.event_id for e in running.recorder.events] == [*before, *during, after]


async def test_a_dropped_connection_resumes(running: Running) -> None:
    running.fake.drop()
    await advance_until(running.clock, lambda: running.fake.resumes != [], step_s=0.5)
    await eventually(lambda: running.ready)
    assert len(running.fake.identifies) == 1


async def test_reconnect_op7_resumes_on_the_resume_url(running: Running) -> None:
    await running.fake.inject_message("one")
    await running.fake.send_op(7)
    await advance_until(running.clock, lambda: running.fake.resumes != [], step_s=0.5)
    await eventually(lambda: running.ready)
    assert running.fake.resumes[0]["seq"] == 2
    assert running.fake.connections[-1].startswith("/resume")
    assert len(running.fake.identifies) == 1
    assert AdapterStatus.RESUMING in [s for s, _ in running.recorder.statuses]


async def test_invalid_session_false_identifies_afresh_after_one_to_five_s(
    running: Running,
) -> None:
    await running.fake.send_op(9, False)
    await eventually(lambda: running.fake.client_close_codes != [])
    await running.clock.advance(0.9)
    assert len(running.fake.identifies) == 1
    await advance_until(running.clock, lambda: len(running.fake.identifies) == 2, step_s=0.5)
    await eventually(lambda: running.ready)
    assert running.fake.resumes == []
    assert running.fake.connections[-1].startswith("/?v=10")


async def test_invalid_session_true_resumes(running: Running) -> None:
    await running.fake.send_op(9, True)
    await advance_until(running.clock, lambda: running.fake.resumes != [], step_s=0.5)
    await eventually(lambda: running.ready)
    assert len(running.fake.identifies) == 1


async def test_an_expired_session_falls_back_to_identify(running: Running) -> None:
    running.fake.sessions.clear()  # Discord forgot the session: RESUME gets op 9 d:false
    await running.fake.close(4000)
    await advance_until(running.clock, lambda: len(running.fake.identifies) == 2, step_s=0.5)
    await eventually(lambda: running.ready)
    assert len(running.fake.resumes) == 1


async def test_the_server_asking_for_a_heartbeat_gets_one_at_once(running: Running) -> None:
    await running.fake.send_op(1)
    await eventually(lambda: running.fake.heartbeats == [1])


@pytest.mark.parametrize(
    ("setup", "code", "words"),
    [
        ({"close_next_identify": 4004}, 4004, "token"),
        ({"message_content_enabled": False}, 4014, "Message Content"),
    ],
)
async def test_a_fatal_close_code_fails_without_reconnecting(
    start: Callable[..., Running],
    fake: FakeDiscord,
    clock: FakeClock,
    setup: dict[str, Any],
    code: int,
    words: str,
) -> None:
    for name, value in setup.items():
        setattr(fake, name, value)
    run = start()
    await eventually(lambda: run.recorder.last is AdapterStatus.FAILED)
    _, detail = run.recorder.statuses[-1]
    assert str(code) in detail and words in detail
    await clock.advance(3600)
    await asyncio.sleep(0.05)
    assert len(fake.connections) == 1 and len(fake.identifies) == 1
    assert run.task.done() and run.task.exception() is None  # run() gave up, no reconnect


async def test_a_rejected_token_fails_before_connecting(
    start: Callable[..., Running], fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run = start(token="MTE4MDAwMDAwMDAwMDAwMDAwMQ.GwRong.not-the-right-token-at-all_0123456789")
    await eventually(lambda: run.recorder.last is AdapterStatus.FAILED)
    assert fake.connections == []
    assert "not-the-right-token" not in caplog.text


async def test_a_429_on_send_is_a_retry_after_the_servers_retry_after(running: Running) -> None:
    running.fake.script(429, recorded("rate_limited"), {"Retry-After": "2"})
    result = await running.adapter.send(OutboundMessage(DM_CHANNEL, "hi", idempotency_key="a"))
    assert result == SendResult.retry("rate_limited", 1.337)
    # The route stays blocked until then: the next send waits on the clock, not the server.
    sending = asyncio.create_task(
        running.adapter.send(OutboundMessage(DM_CHANNEL, "hi", idempotency_key="a"))
    )
    await running.clock.advance(1.0)
    assert not sending.done() and len(running.fake.posts) == 1
    await running.clock.advance(0.5)
    assert (await sending).ok and len(running.fake.posts) == 2


async def test_a_global_429_is_a_retry_too(running: Running) -> None:
    running.fake.script(429, recorded("rate_limited_global"), {"X-RateLimit-Global": "true"})
    result = await running.adapter.send(OutboundMessage(DM_CHANNEL, "hi"))
    assert result == SendResult.retry("rate_limited", 0.642)


async def test_an_empty_bucket_is_waited_out_locally_without_a_429(
    start: Callable[..., Running], fake: FakeDiscord, clock: FakeClock
) -> None:
    fake.bucket_limit, fake.bucket_reset_s = 2, 5.0
    run = start()
    await eventually(lambda: run.ready)
    for key in ("a", "b"):
        assert (await run.adapter.send(OutboundMessage(DM_CHANNEL, key, idempotency_key=key))).ok
    third = asyncio.create_task(
        run.adapter.send(OutboundMessage(DM_CHANNEL, "c", idempotency_key="c"))
    )
    await clock.advance(4.0)
    assert not third.done()
    await clock.advance(1.5)
    assert (await third).ok
    assert len(fake.posts) == 3 and len(fake.messages[DM_CHANNEL]) == 3


@pytest.mark.parametrize(
    ("channels", "code"),
    [("forbidden_channels", "discord_50001"), ("missing_channels", "discord_10003")],
)
async def test_403_and_404_fail_with_discords_error_code(
    running: Running, channels: str, code: str
) -> None:
    getattr(running.fake, channels).add(DM_CHANNEL)
    assert await running.adapter.send(OutboundMessage(DM_CHANNEL, "hi")) == SendResult.failed(code)


async def test_server_errors_and_network_errors_are_retried(running: Running) -> None:
    running.fake.script(502, "<html>bad gateway</html>")
    assert await running.adapter.send(OutboundMessage(DM_CHANNEL, "hi")) == SendResult.retry(
        "http_502"
    )
    cfg = DiscordAdapterConfig(type="discord", token=TOKEN, api_base="http://127.0.0.1:9/api/v10")
    offline = DiscordAdapter(cfg, clock=running.clock)
    assert await offline.send(OutboundMessage(DM_CHANNEL, "hi")) == SendResult.retry(
        "network_error"
    )


async def test_malformed_frames_are_logged_and_skipped(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    fake = running.fake
    await fake.send_raw("{nope")
    await fake.send_raw("[1]")
    await fake.send_raw(json.dumps({"op": 0, "d": {}, "s": None, "t": "MESSAGE_CREATE"}))
    await fake.dispatch("MESSAGE_CREATE", {"id": "not a snowflake"})
    await fake.dispatch("READY", {"session_id": 5})
    good = await fake.inject_message("still here")
    await eventually(lambda: len(running.recorder.events) == 1)
    assert running.recorder.events[0].event_id == good["id"]
    assert len(fake.connections) == 1 and running.ready
    assert caplog.text.count("skipped") >= 4
    assert TOKEN not in caplog.text


async def test_an_exhausted_identify_budget_waits_for_the_reset(
    start: Callable[..., Running], fake: FakeDiscord, clock: FakeClock
) -> None:
    fake.session_start_limit.update(remaining=0, reset_after=60_000)
    run = start()
    await eventually(lambda: run.recorder.last is AdapterStatus.DEGRADED)
    assert "budget" in run.recorder.statuses[-1][1]
    await clock.advance(59.0)
    await asyncio.sleep(0.05)
    assert fake.connections == [] and fake.identifies == []
    fake.session_start_limit.update(remaining=1000, reset_after=86_400_000)
    await clock.advance(1.5)
    await eventually(lambda: run.ready)
    assert len(fake.identifies) == 1


async def test_a_restart_resumes_the_persisted_session(
    start: Callable[..., Running], fake: FakeDiscord
) -> None:
    first = start()
    await eventually(lambda: first.ready)
    await fake.inject_message("before the restart")
    await eventually(lambda: len(first.recorder.events) == 1)
    await advance_until(first.clock, lambda: len(fake.heartbeats) >= 1, step_s=5.0)
    first.task.cancel()
    await asyncio.gather(first.task, return_exceptions=True)
    assert fake.client_close_codes == [4000]  # not 1000: the session stays resumable
    missed = await fake.inject_message("while restarting")
    second = start(Recorder(kv=dict(first.recorder.kv)))
    await eventually(lambda: second.ready)
    assert len(fake.identifies) == 1 and fake.resumes[0]["seq"] == 2
    assert [e.event_id for e in second.recorder.events] == [missed["id"]]


@pytest.fixture
def db_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp) / "chat.db"


async def test_a_dm_is_answered_through_the_hub_once_even_when_replayed(
    fake: FakeDiscord, clock: FakeClock, db_path: Path
) -> None:
    async def answer(event: InboundEvent, trusted: bool) -> Answer:
        return Answer("greeting", 0.9, f"you said: {event.text}", 1.0)

    store = await Store.open(db_path)

    async def opened() -> Store:
        return store

    async def kv() -> KeyValueStore:
        return store.kv

    adapter = DiscordAdapter(config(fake), clock=clock, rng=random.Random(7))
    hub = ChatHub(
        store=opened,
        answer=answer,
        adapters={"discord": adapter},
        clock=SystemClock(),
        policies={"discord": PlatformPolicy(dm_policy="open")},
    )
    service_ctx = StandaloneContext("chat:discord")
    tasks = [
        asyncio.create_task(hub.run(StandaloneContext("chat"))),
        asyncio.create_task(AdapterService(adapter, hub, kv).run(service_ctx)),
    ]
    try:
        await asyncio.wait_for(service_ctx.is_ready.wait(), 5)
        dm = await fake.inject_message("hello there")
        await eventually(lambda: len(fake.messages.get(DM_CHANNEL, [])) == 1)
        [reply] = fake.messages[DM_CHANNEL]
        assert reply["content"] == "you said: hello there"
        assert reply["message_reference"]["message_id"] == dm["id"]
        assert fake.posts[0]["enforce_nonce"] is True
        await fake.dispatch("MESSAGE_CREATE", dm)  # the same message again, as a replay
        await fake.inject_message("second")
        await eventually(lambda: len(fake.messages[DM_CHANNEL]) == 2)
        assert fake.messages[DM_CHANNEL][1]["content"] == "you said: second"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


async def test_a_configured_gateway_url_wins_over_the_discovered_one(
    start: Callable[..., Running], fake: FakeDiscord
) -> None:
    run = start(gateway_url=f"{fake.gateway_url}/pinned")
    await eventually(lambda: run.ready)
    assert fake.connections == ["/pinned?v=10&encoding=json&compress=zlib-stream"]
    assert fake.requests[0] == "GET /api/v10/gateway/bot"  # still asked, for the budget


async def test_an_unreachable_gateway_is_retried_with_growing_backoff(
    start: Callable[..., Running], fake: FakeDiscord, clock: FakeClock
) -> None:
    run = start(gateway_url="ws://127.0.0.1:9")
    await eventually(lambda: len(fake.requests) == 1)
    attempts_at: list[float] = []
    while len(attempts_at) < 5:
        await advance_until(clock, lambda: len(fake.requests) > len(attempts_at) + 1, step_s=1.0)
        attempts_at.append(clock.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert gaps == sorted(gaps) and gaps[-1] > 4 * gaps[0] / 2
    assert run.recorder.last is AdapterStatus.DEGRADED


async def test_debug_logs_never_show_the_token(
    start: Callable[..., Running], fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run = start()
    await eventually(lambda: run.ready)
    await fake.send_op(7)
    await advance_until(run.clock, lambda: fake.resumes != [] and run.ready, step_s=0.5)
    await run.adapter.send(OutboundMessage(DM_CHANNEL, "hi"))
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("appliance.")]
    assert any("resumed" in line for line in ours)
    # websockets would dump the IDENTIFY and RESUME frames (token included) at DEBUG.
    assert not [line for line in ours if TOKEN.split(".")[0][:12] in line]


async def test_a_dispatch_with_a_sequence_already_seen_is_not_emitted_again(
    running: Running,
) -> None:
    fake = running.fake
    first = await fake.inject_message("once")
    await eventually(lambda: len(running.recorder.events) == 1)
    [session] = fake.sessions.values()
    await fake.send_raw(json.dumps(session.log[-1]))  # a replay that starts too early
    second = await fake.inject_message("twice")
    await eventually(lambda: len(running.recorder.events) >= 2)
    await asyncio.sleep(0.02)
    assert [e.event_id for e in running.recorder.events] == [first["id"], second["id"]]


@pytest.mark.parametrize(
    ("code", "resumes"), [(4000, True), (4008, True), (1006, True), (4007, False), (4009, False)]
)
async def test_close_codes_resume_or_identify_as_the_policy_says(
    running: Running, code: int, resumes: bool
) -> None:
    fake = running.fake
    if code == 1006:
        fake.drop()
    else:
        await fake.close(code)
    await advance_until(
        running.clock, lambda: len(fake.resumes) + len(fake.identifies) == 2, step_s=0.5
    )
    await eventually(lambda: running.ready)
    assert (len(fake.resumes), len(fake.identifies)) == ((1, 1) if resumes else (0, 2))


async def test_a_server_that_closes_after_every_ready_gets_no_identify_storm(
    start: Callable[..., Running], fake: FakeDiscord, clock: FakeClock
) -> None:
    fake.close_after_ready = 4009  # session timed out: each retry must IDENTIFY
    run = start()
    identified_at: list[float] = []
    while len(identified_at) < 5:
        await advance_until(clock, lambda: len(fake.identifies) > len(identified_at), step_s=0.5)
        identified_at.append(clock.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(identified_at)]
    assert gaps == sorted(gaps) and gaps[-1] >= 4.0
    assert run.recorder.last is AdapterStatus.DEGRADED


async def test_the_fake_enforces_the_gateways_rules(fake: FakeDiscord) -> None:
    # The fake is only worth its tests if it refuses what Discord refuses (research §5.1).
    url = f"{fake.gateway_url}/?v=10&encoding=json"
    good = identify(TOKEN, 1 << 9)

    async def closed_with(*frames: str) -> int | None:
        async with connect(url) as ws:
            await ws.recv()  # HELLO
            for frame in frames:
                await ws.send(frame)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.recv()
        return info.value.rcvd.code if info.value.rcvd else None

    assert await closed_with('{"op": 3, "d": {}}') == 4003
    assert await closed_with(good, good) == 4005
    assert await closed_with(identify("wrong", 1 << 9)) == 4004
    assert await closed_with('{"op": 1, "d": null}', "x" * 5000) == 4002
    assert await closed_with("{not json") == 4002
    async with connect(f"{fake.gateway_url}/?v=9&encoding=json") as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 4012
