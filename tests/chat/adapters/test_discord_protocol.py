"""The Discord wire format, fed recorded payloads and arbitrary JSON (no sockets)."""

import json
import random
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.chat.adapters.discord_protocol import (
    DEFAULT_INTENTS,
    MAX_NONCE_CHARS,
    MAX_SEND_BYTES,
    ZLIB_SUFFIX,
    DiscordPayloadError,
    Heartbeat,
    IdentifyBudget,
    Intents,
    Op,
    Payload,
    RouteBuckets,
    Session,
    ZlibStream,
    close_reason,
    create_message_body,
    gateway_url,
    heartbeat,
    heartbeat_interval_s,
    identify,
    invalid_session_resumable,
    message_event,
    nonce,
    parse_gateway_bot,
    parse_payload,
    parse_rest_error,
    resume,
)
from appliance.chat.events import ChatKind, OutboundMessage
from tests.fakes.discord import BOT_ID, recorded

ROUTE = "POST /channels/{channel.id}/messages"


def frame(name: str) -> str:
    return json.dumps(recorded(name))


def test_every_recorded_gateway_payload_parses() -> None:
    assert parse_payload(frame("hello")).op == Op.HELLO
    assert parse_payload(frame("heartbeat_ack")).op == Op.HEARTBEAT_ACK
    assert parse_payload(frame("reconnect")).op == Op.RECONNECT
    ready = parse_payload(frame("ready").encode())
    assert (ready.op, ready.s, ready.t) == (Op.DISPATCH, 1, "READY")
    resumed = parse_payload(frame("resumed"))
    assert (resumed.s, resumed.t) == (7, "RESUMED")
    assert invalid_session_resumable(parse_payload(frame("invalid_session"))) is False
    assert invalid_session_resumable(Payload(Op.INVALID_SESSION, True)) is True


def test_hello_gives_the_heartbeat_interval_in_seconds() -> None:
    assert heartbeat_interval_s(parse_payload(frame("hello"))) == 41.25
    for d in (None, {}, {"heartbeat_interval": "41250"}, {"heartbeat_interval": 0}):
        with pytest.raises(DiscordPayloadError):
            heartbeat_interval_s(Payload(Op.HELLO, d))


@pytest.mark.parametrize(
    "text",
    [
        "{nope",
        "[1, 2]",
        '"hello"',
        '{"d": {}}',
        '{"op": true}',
        '{"op": "0"}',
        '{"op": 0, "d": {}, "s": null, "t": "MESSAGE_CREATE"}',
        '{"op": 0, "d": {}, "s": -1, "t": "MESSAGE_CREATE"}',
        '{"op": 0, "d": {}, "s": 3, "t": null}',
        b"\xff\xfe",
    ],
)
def test_malformed_frames_raise_the_adapters_error(text: str | bytes) -> None:
    with pytest.raises(DiscordPayloadError) as info:
        parse_payload(text)
    assert info.value.code == "discord_payload_invalid"


def test_identify_asks_for_messages_dms_and_content() -> None:
    payload = json.loads(identify("tok", int(DEFAULT_INTENTS)))
    assert payload["op"] == 2
    d = payload["d"]
    assert d["token"] == "tok"
    for intent in (Intents.GUILD_MESSAGES, Intents.DIRECT_MESSAGES, Intents.MESSAGE_CONTENT):
        assert d["intents"] & intent
    assert d["intents"] == (1 << 9) | (1 << 12) | (1 << 15)
    assert set(d["properties"]) == {"os", "browser", "device"}
    assert len(identify("x" * 72, int(DEFAULT_INTENTS)).encode()) <= MAX_SEND_BYTES


def test_resume_and_heartbeat_payloads() -> None:
    assert json.loads(resume("tok", "abc", 42)) == {
        "op": 6,
        "d": {"token": "tok", "session_id": "abc", "seq": 42},
    }
    assert json.loads(heartbeat(None)) == {"op": 1, "d": None}
    assert json.loads(heartbeat(7)) == {"op": 1, "d": 7}


def test_gateway_url_gets_version_and_encoding() -> None:
    assert gateway_url("wss://gateway.discord.gg") == "wss://gateway.discord.gg/?v=10&encoding=json"
    assert (
        gateway_url("ws://127.0.0.1:9/resume?v=9&trace=1")
        == "ws://127.0.0.1:9/resume?v=10&encoding=json&trace=1"
    )


def test_ready_starts_a_session_and_sequence_only_moves_forward() -> None:
    session = Session()
    assert not session.resumable
    session.start(parse_payload(frame("ready")))
    assert session.resumable and session.seq == 1 and session.user_id == BOT_ID
    assert session.resume_url == "wss://gateway-us-east1-b.discord.gg"
    session.observe(Payload(Op.DISPATCH, {}, 5, "MESSAGE_CREATE"))
    session.observe(Payload(Op.DISPATCH, {}, 3, "MESSAGE_CREATE"))
    session.observe(Payload(Op.HEARTBEAT_ACK, None))
    assert session.seq == 5
    assert Session.loads(session.dumps()) == session
    session.forget()
    assert not session.resumable and session.seq is None and session.user_id == BOT_ID


@pytest.mark.parametrize("stored", [None, "", "nope", "[]", '{"seq": "5", "session_id": 3}'])
def test_an_unusable_stored_session_is_an_empty_one(stored: str | None) -> None:
    assert Session.loads(stored) == Session()


@pytest.mark.parametrize(
    "change",
    [
        {"session_id": ""},
        {"resume_gateway_url": "https://x"},
        {"resume_gateway_url": None},
        {"user": {"id": "me"}},
    ],
)
def test_a_ready_without_what_resume_needs_is_refused(change: dict[str, Any]) -> None:
    ready = recorded("ready")
    ready["d"].update(change)
    with pytest.raises(DiscordPayloadError):
        Session().start(parse_payload(json.dumps(ready)))


def test_heartbeat_first_beat_is_jittered_and_a_missing_ack_is_a_zombie() -> None:
    beat = Heartbeat(41.25)
    delays = [beat.first_delay_s(random.Random(seed)) for seed in range(20)]
    assert all(0 <= d < 41.25 for d in delays) and len(set(delays)) > 1
    assert beat.beat(now=10.0)
    beat.ack(now=10.2)
    assert beat.latency_s == pytest.approx(0.2)
    assert beat.beat(now=51.25)
    assert not beat.beat(now=92.5)  # no ACK since the last beat


def test_identify_budget_waits_for_the_reset_when_used_up() -> None:
    info = parse_gateway_bot(recorded("gateway_bot"), now=100.0)
    assert info.url == "wss://gateway.discord.gg"
    assert (info.budget.total, info.budget.remaining) == (1000, 998)
    assert info.budget.wait_s(100.0) == 0
    empty = IdentifyBudget.parse(
        {"total": 1000, "remaining": 0, "reset_after": 60_000, "max_concurrency": 1}, now=100.0
    )
    assert empty.wait_s(100.0) == 60.0
    assert empty.wait_s(130.0) == 30.0
    assert empty.wait_s(160.0) == 0
    empty.spend(160.0)
    assert empty.remaining == 999


def test_the_last_identify_uses_up_the_budget() -> None:
    budget = IdentifyBudget(total=1000, remaining=1, resets_at=500.0)
    budget.spend(10.0)
    assert budget.remaining == 0 and budget.wait_s(10.0) == 490.0


@pytest.mark.parametrize(
    "body",
    [None, [], {"url": "https://x", "session_start_limit": {}}, {"url": "wss://x"}],
)
def test_a_broken_gateway_bot_answer_is_refused(body: Any) -> None:
    with pytest.raises(DiscordPayloadError):
        parse_gateway_bot(body, now=0.0)


def test_a_guild_mention_becomes_a_group_event_without_the_mention() -> None:
    d = recorded("message_create_guild")["d"]
    event = message_event(d, BOT_ID)
    assert event is not None
    assert event.platform == "discord"
    assert event.event_id == d["id"] and event.chat_id == d["channel_id"]
    assert event.chat_kind is ChatKind.GROUP and event.mentions_bot
    assert event.sender_id == d["author"]["id"]
    assert event.text == "what is the temperature?"
    assert event.ts == datetime(2026, 11, 24, 21, 30, 15, 482000, tzinfo=UTC).timestamp()
    assert event.raw is d


def test_a_dm_becomes_a_direct_event() -> None:
    event = message_event(recorded("message_create_dm")["d"], BOT_ID)
    assert event is not None
    assert event.chat_kind is ChatKind.DIRECT and not event.mentions_bot
    assert event.text == "hello there" and event.reply_to is None


def test_nickname_mentions_in_the_middle_are_stripped_and_replies_kept() -> None:
    d = recorded("message_create_guild")["d"]
    d["content"] = f"hey <@!{BOT_ID}>   how are you <@{BOT_ID}>"
    d["message_reference"] = {"message_id": "1310000000000000001", "channel_id": d["channel_id"]}
    event = message_event(d, BOT_ID)
    assert event is not None
    assert event.text == "hey how are you"
    assert event.reply_to == "1310000000000000001"


def test_a_mention_of_someone_else_is_not_a_mention_of_the_bot() -> None:
    d = recorded("message_create_guild")["d"]
    d["mentions"] = [{"id": "1150000000000000099", "username": "bob"}]
    d["content"] = "<@1150000000000000099> hi"
    event = message_event(d, BOT_ID)
    assert event is not None and not event.mentions_bot
    assert event.text == "<@1150000000000000099> hi"


@pytest.mark.parametrize(
    "change",
    [
        {"author": {"id": "1150000000000000050", "bot": True}},  # another bot
        {"author": {"id": BOT_ID}},  # the bot itself
        {"webhook_id": "1160000000000000001"},
        {"type": 7},  # a member joined
        {"author": {"id": "643945264868098049", "system": True}},
    ],
)
def test_bots_webhooks_and_system_messages_are_ignored(change: dict[str, Any]) -> None:
    d = recorded("message_create_dm")["d"]
    d.update(change)
    assert message_event(d, BOT_ID) is None


def test_missing_content_is_empty_text_and_a_bad_timestamp_uses_the_snowflake() -> None:
    d = recorded("message_create_dm")["d"]
    del d["content"]
    d["timestamp"] = "yesterday"
    event = message_event(d, None)
    assert event is not None and event.text == ""
    # The snowflake 1310000000000000456 was minted at (id >> 22) ms after 2015-01-01.
    assert event.ts == pytest.approx(((1310000000000000456 >> 22) + 1420070400000) / 1000)


@pytest.mark.parametrize(
    "change",
    [
        {"id": 1310000000000000456},
        {"id": "abc"},
        {"channel_id": None},
        {"author": None},
        {"author": {"id": ""}},
        {"guild_id": 5},
        {"mentions": "everyone"},
    ],
)
def test_a_malformed_message_raises_the_adapters_error(change: dict[str, Any]) -> None:
    d = recorded("message_create_guild")["d"]
    d.update(change)
    with pytest.raises(DiscordPayloadError):
        message_event(d, BOT_ID)


def test_the_nonce_is_short_stable_and_distinct() -> None:
    first = nonce("reply:discord:1310000000000000123")
    assert len(first) <= MAX_NONCE_CHARS
    assert first == nonce("reply:discord:1310000000000000123")
    assert first != nonce("reply:discord:1310000000000000124")


def test_create_message_body() -> None:
    body = create_message_body(
        OutboundMessage("1170000000000000200", "hi @everyone", reply_to="13", idempotency_key="k")
    )
    assert body == {
        "content": "hi @everyone",
        "allowed_mentions": {"parse": []},
        "message_reference": {"message_id": "13", "fail_if_not_exists": False},
        "nonce": nonce("k"),
        "enforce_nonce": True,
    }
    plain = create_message_body(OutboundMessage("1", "hi"))
    assert "nonce" not in plain and "enforce_nonce" not in plain
    assert "message_reference" not in plain


def test_rest_errors_carry_discords_code() -> None:
    assert parse_rest_error(403, recorded("error_403")).error_code == "discord_50001"
    assert parse_rest_error(404, recorded("error_404")).error_code == "discord_10003"
    assert parse_rest_error(401, recorded("error_401")).error_code == "http_401"
    error = parse_rest_error(502, None)
    assert (error.error_code, error.message) == ("http_502", "HTTP 502")


def headers(remaining: int, reset_after: float, bucket: str = "abc") -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset-After": str(reset_after),
        "X-RateLimit-Bucket": bucket,
    }


def test_an_empty_bucket_waits_until_its_reset() -> None:
    buckets = RouteBuckets()
    assert buckets.wait_s(ROUTE, "1", now=0.0) == 0
    buckets.update(ROUTE, "1", headers(1, 2.0), now=0.0)
    assert buckets.wait_s(ROUTE, "1", now=0.5) == 0
    buckets.update(ROUTE, "1", headers(0, 1.5), now=0.5)
    assert buckets.wait_s(ROUTE, "1", now=1.0) == 1.0
    assert buckets.wait_s(ROUTE, "2", now=1.0) == 0  # another channel: its own bucket
    assert buckets.wait_s(ROUTE, "1", now=2.0) == 0


def test_routes_that_share_a_bucket_header_share_the_wait() -> None:
    buckets = RouteBuckets()
    buckets.update(ROUTE, "1", headers(0, 3.0, bucket="shared"), now=0.0)
    buckets.update(
        "PATCH /channels/{channel.id}/messages/{id}", "1", {"X-RateLimit-Bucket": "shared"}, 0.0
    )
    assert buckets.wait_s("PATCH /channels/{channel.id}/messages/{id}", "1", now=1.0) == 2.0


def test_a_429_blocks_the_route_for_the_bodys_retry_after() -> None:
    buckets = RouteBuckets()
    limited = buckets.limited(ROUTE, "1", {"Retry-After": "2"}, recorded("rate_limited"), 10.0)
    assert limited.retry_after_s == 1.337 and not limited.is_global and limited.scope == "user"
    assert buckets.wait_s(ROUTE, "1", now=10.0) == pytest.approx(1.337)
    assert buckets.wait_s(ROUTE, "2", now=10.0) == 0


def test_a_global_429_blocks_every_route() -> None:
    buckets = RouteBuckets()
    limited = buckets.limited(
        ROUTE, "1", {"X-RateLimit-Global": "true"}, recorded("rate_limited_global"), 0.0
    )
    assert limited.is_global and limited.scope == "global"
    assert buckets.wait_s("GET /gateway/bot", "", now=0.0) == pytest.approx(0.642)


def test_a_429_without_a_body_uses_the_retry_after_header() -> None:
    buckets = RouteBuckets()
    assert buckets.limited(ROUTE, "1", {"Retry-After": "3"}, "<html>", 0.0).retry_after_s == 3.0
    assert buckets.limited(ROUTE, "1", {}, None, 0.0).retry_after_s == 1.0


def test_close_reasons_are_sentences() -> None:
    assert "token" in close_reason(4004)
    assert "Message Content" in close_reason(4014)
    assert close_reason(4999) == "closed with 4999 (no reason given)"
    assert close_reason("invalid_session") == "invalid session"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
snowflakes = st.one_of(st.from_regex(r"\A\d{1,20}\Z"), json_values)
messages = st.fixed_dictionaries(
    {
        "id": snowflakes,
        "channel_id": snowflakes,
        "author": st.fixed_dictionaries({"id": snowflakes}, optional={"bot": json_values}),
    },
    optional={
        "content": json_values,
        "guild_id": snowflakes,
        "mentions": st.one_of(json_values, st.lists(st.fixed_dictionaries({"id": snowflakes}))),
        "type": json_values,
        "timestamp": st.one_of(json_values, st.datetimes().map(lambda t: t.isoformat())),
        "message_reference": json_values,
        "webhook_id": json_values,
    },
)
payloads = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(list(Op)), json_values)},
    optional={"d": json_values, "s": json_values, "t": json_values},
)


@given(
    st.one_of(
        st.binary(max_size=100),
        st.text(max_size=100),
        json_values.map(json.dumps),
        payloads.map(json.dumps),
    )
)
def test_any_frame_parses_or_raises_only_the_adapters_error(data: str | bytes) -> None:
    try:
        payload = parse_payload(data)
    except DiscordPayloadError:
        return
    assert isinstance(payload.op, int)
    for handle in (heartbeat_interval_s, lambda p: Session().start(p)):
        try:
            handle(payload)
        except DiscordPayloadError:
            pass


@given(st.one_of(messages, json_values), st.sampled_from([BOT_ID, None]))
def test_any_message_create_gives_an_event_none_or_the_adapters_error(
    d: Any, bot_id: str | None
) -> None:
    try:
        event = message_event(d, bot_id)
    except DiscordPayloadError:
        return
    if event is not None:
        assert event.event_id == d["id"] and isinstance(event.text, str)
        assert f"<@{bot_id}>" not in event.text


@given(json_values, st.dictionaries(st.sampled_from(list(headers(0, 0))), st.text(max_size=8)))
def test_any_rest_answer_is_handled_without_raising(body: Any, hdrs: dict[str, str]) -> None:
    buckets = RouteBuckets()
    buckets.update(ROUTE, "1", hdrs, now=0.0)
    limited = buckets.limited(ROUTE, "1", hdrs, body, now=0.0)
    assert limited.retry_after_s >= 0
    assert buckets.wait_s(ROUTE, "1", now=0.0) >= 0
    assert parse_rest_error(400, body).error_code.startswith(("discord_", "http_"))
    try:
        parse_gateway_bot(body, now=0.0)
    except DiscordPayloadError:
        pass


def deflate_all(messages: list[str]) -> list[bytes]:
    """Each message compressed on one shared context and flushed, as Discord sends them."""
    deflate = zlib.compressobj()
    return [deflate.compress(m.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH) for m in messages]


def test_zlib_stream_inflates_messages_split_over_frames() -> None:
    hello, ready = frame("hello"), frame("ready")
    first, second = deflate_all([hello, ready])
    stream = ZlibStream()
    assert stream.feed(first) == hello
    assert stream.feed(second[:10]) is None
    assert stream.feed(second[10:]) == ready


def test_a_corrupt_zlib_stream_raises_the_adapters_error() -> None:
    with pytest.raises(DiscordPayloadError):
        ZlibStream().feed(b"not zlib" + ZLIB_SUFFIX)


def test_gateway_url_asks_for_zlib_stream_when_wanted() -> None:
    assert gateway_url("wss://g.example", zlib_stream=True) == (
        "wss://g.example/?v=10&encoding=json&compress=zlib-stream"
    )
    assert "compress" not in gateway_url("wss://g.example/?compress=zstd-stream")


@given(st.lists(st.text(max_size=300), min_size=1, max_size=5), st.data())
def test_zlib_stream_gives_back_every_message_however_it_is_split(
    messages: list[str], data: st.DataObject
) -> None:
    stream = ZlibStream()
    for message, blob in zip(messages, deflate_all(messages), strict=True):
        cut = data.draw(st.integers(0, max(0, len(blob) - 4)))
        if cut:
            assert stream.feed(blob[:cut]) is None
        assert stream.feed(blob[cut:]) == message


@given(st.lists(st.binary(max_size=64), max_size=5))
def test_arbitrary_bytes_never_raise_anything_but_the_adapters_error(frames: list[bytes]) -> None:
    stream = ZlibStream()
    for data in frames:
        try:
            stream.feed(data + ZLIB_SUFFIX)
        except DiscordPayloadError:
            return
