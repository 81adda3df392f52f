"""The Bot API wire format, pure: recorded payloads, edge cases and arbitrary JSON."""

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.chat.adapters.telegram_protocol import (
    ApiError,
    ApiOk,
    BotIdentity,
    TelegramProtocolError,
    backoff_s,
    get_updates_params,
    parse_me,
    parse_offset,
    parse_response,
    parse_update,
    parse_updates,
    reply_message_id,
    send_message_payload,
    send_result,
)
from appliance.chat.events import ChatKind, OutboundMessage
from appliance.chat.policy import reconnect_decision
from appliance.errors import ApplianceError
from tests.fakes.telegram import PROXY_502_PAGE, recorded

BOT = BotIdentity(7000000001, "pi_appliance_bot")


def body(name: str) -> tuple[int, bytes]:
    data = recorded(name)
    return (200 if data["ok"] else data["error_code"]), json.dumps(data).encode()


def event_of(name: str) -> Any:
    return parse_update(recorded(name), BOT)


def test_get_me_gives_the_bot_identity() -> None:
    reply = parse_response(*body("get_me"))
    assert isinstance(reply, ApiOk)
    assert parse_me(reply.result) == BOT


@pytest.mark.parametrize(
    ("name", "code", "retry_after_s"),
    [("error_401", 401, None), ("error_409_poller", 409, None), ("error_429", 429, 7.0)],
)
def test_errors_keep_code_description_and_retry_after(
    name: str, code: int, retry_after_s: float | None
) -> None:
    reply = parse_response(*body(name))
    assert isinstance(reply, ApiError)
    assert (reply.error_code, reply.retry_after_s) == (code, retry_after_s)
    assert reply.description == recorded(name)["description"]


def test_a_proxy_page_on_5xx_is_an_api_error_but_on_200_it_is_malformed() -> None:
    assert parse_response(502, PROXY_502_PAGE) == ApiError(502, "HTTP 502 without a Bot API body")
    with pytest.raises(TelegramProtocolError):
        parse_response(200, PROXY_502_PAGE)
    with pytest.raises(TelegramProtocolError):
        parse_response(200, b'{"ok": true}')  # no result
    assert TelegramProtocolError.code == "telegram_malformed"


def test_a_private_message_is_a_direct_event() -> None:
    event = event_of("update_private_text")
    assert event.platform == "telegram"
    assert (event.event_id, event.chat_id, event.sender_id) == (
        "111111111:42",
        "111111111",
        "111111111",
    )
    assert event.chat_kind is ChatKind.DIRECT
    assert event.text == "how hot is the cpu?"
    assert event.ts == 1764000000.0 and not event.mentions_bot


def test_a_group_mention_addresses_the_bot_and_is_stripped() -> None:
    event = event_of("update_group_mention")
    assert event.chat_kind is ChatKind.GROUP and event.chat_id == "-1001234567890"
    assert event.mentions_bot
    assert event.text == "what is the temperature?"


def test_mention_offsets_count_utf16_units_and_ignore_case() -> None:
    # "👋" is two UTF-16 code units: a code-point slice would miss the mention.
    event = event_of("update_group_mention_emoji")
    assert event.mentions_bot
    assert event.text == "👋 hi, status please"


@pytest.mark.parametrize(
    ("name", "mentioned", "text"),
    [
        ("update_group_other_mention", False, "@alice_ng did you see this?"),
        ("update_group_plain", False, "lunch at noon?"),
        ("update_group_command", True, "/status"),
        ("update_group_command_other_bot", False, "/status@weather_bot"),
        ("update_group_reply_to_bot", True, "and the memory?"),
        ("update_private_start", True, "/start"),
    ],
)
def test_who_a_group_message_addresses(name: str, mentioned: bool, text: str) -> None:
    event = event_of(name)
    assert (event.mentions_bot, event.text) == (mentioned, text)


def test_a_reply_points_at_the_replied_message_of_the_same_chat() -> None:
    event = event_of("update_group_reply_to_bot")
    assert event.reply_to == "-1001234567890:3059"


@pytest.mark.parametrize(
    "name",
    [
        "update_edited_message",
        "update_photo",
        "update_from_bot",
        "update_channel_post",
        "update_new_members",
    ],
)
def test_updates_without_answerable_text_give_no_event(name: str) -> None:
    assert event_of(name) is None


@pytest.mark.parametrize(
    ("text", "entities", "expected"),
    [
        ("@pi_appliance_bot, how hot?", [(0, 17)], "how hot?"),
        ("what do you think @pi_appliance_bot?", [(18, 17)], "what do you think?"),
        ("a @pi_appliance_bot b", [(2, 17)], "a b"),
        ("line one\n@pi_appliance_bot\nline two", [(9, 17)], "line one\n\nline two"),
        ("@pi_appliance_bot @pi_appliance_bot hi", [(0, 17), (18, 17)], "hi"),
    ],
)
def test_stripping_mentions_keeps_the_sentence_readable(
    text: str, entities: list[tuple[int, int]], expected: str
) -> None:
    update = recorded("update_group_mention")
    update["message"]["text"] = text
    update["message"]["entities"] = [
        {"offset": o, "length": n, "type": "mention"} for o, n in entities
    ]
    event = parse_update(update, BOT)
    assert event is not None and event.mentions_bot and event.text == expected


@pytest.mark.parametrize(
    "entities",
    [
        "nope",
        [{"offset": 40, "length": 17, "type": "mention"}],
        [{"offset": -1, "length": 3, "type": "mention"}],
        [{"offset": 1, "length": 1, "type": "mention"}],  # inside the emoji's surrogate pair
        ["mention"],
    ],
)
def test_broken_entities_make_the_message_malformed(entities: object) -> None:
    update = recorded("update_group_mention_emoji")
    update["message"]["entities"] = entities
    with pytest.raises(TelegramProtocolError):
        parse_update(update, BOT)


def test_a_lone_surrogate_from_json_makes_the_message_malformed() -> None:
    update = json.loads(json.dumps(recorded("update_group_mention")).replace("what", "\\ud800"))
    assert "\ud800" in update["message"]["text"]
    with pytest.raises(TelegramProtocolError):
        parse_update(update, BOT)


def test_a_batch_skips_what_it_cannot_answer_but_confirms_it() -> None:
    updates = [
        recorded("update_private_text"),  # 815000001
        recorded("update_photo"),  # 815000011: ignored
        {"update_id": 815000012, "message": {"chat": "broken"}},  # malformed
        {"no": "id"},  # malformed, no id to confirm
        recorded("update_group_mention"),  # 815000003
    ]
    batch = parse_updates(updates, BOT, None)
    assert [e.event_id for e in batch.events] == ["111111111:42", "-1001234567890:3051"]
    assert (batch.next_offset, batch.ignored, batch.malformed) == (815000013, 1, 2)


def test_updates_below_the_offset_are_already_confirmed() -> None:
    batch = parse_updates([recorded("update_private_text")], BOT, 815000002)
    assert batch.events == () and batch.next_offset == 815000002
    assert parse_updates([], BOT, None).next_offset is None


def test_get_updates_params_ask_for_messages_only() -> None:
    assert get_updates_params(None, 30) == {
        "timeout": 30,
        "limit": 100,
        "allowed_updates": ["message"],
    }
    assert get_updates_params(7, 0)["offset"] == 7


def test_send_message_replies_to_the_message_part_of_the_event_id() -> None:
    payload = send_message_payload(
        OutboundMessage("-1001234567890", "hi", reply_to="-1001234567890:3051")
    )
    assert payload == {
        "chat_id": -1001234567890,
        "text": "hi",
        "reply_parameters": {"message_id": 3051, "allow_sending_without_reply": True},
    }
    assert "reply_parameters" not in send_message_payload(OutboundMessage("5", "x"))
    assert send_message_payload(OutboundMessage("@news", "x"))["chat_id"] == "@news"


@pytest.mark.parametrize(
    ("chat_id", "reply_to", "expected"),
    [("5", "5:9", 9), ("5", "6:9", None), ("5", "9", 9), ("5", "5:x", None), ("5", None, None)],
)
def test_reply_message_id(chat_id: str, reply_to: str | None, expected: int | None) -> None:
    assert reply_message_id(chat_id, reply_to) == expected


@pytest.mark.parametrize(
    ("name", "ok", "retryable", "code"),
    [
        ("send_message", True, False, None),
        ("error_429", False, True, "rate_limited"),
        ("error_400_too_long", False, False, "too_long"),
        ("error_400_chat_not_found", False, False, "chat_not_found"),
        ("error_400_migrated", False, False, "chat_migrated"),
        ("error_403_blocked", False, False, "bot_blocked"),
        ("error_401", False, False, "unauthorized"),
    ],
)
def test_send_results(name: str, ok: bool, retryable: bool, code: str | None) -> None:
    result = send_result(parse_response(*body(name)))
    assert (result.ok, result.retryable, result.error_code) == (ok, retryable, code)
    if name == "send_message":
        assert result.message_id == "3063"
    if name == "error_429":
        assert result.retry_after_s == 7.0


@pytest.mark.parametrize(
    ("signal", "decision"), [(401, "stop"), (404, "stop"), (409, "reconnect"), (502, "reconnect")]
)
def test_only_a_refused_token_or_a_missing_bot_stops_polling(signal: int, decision: str) -> None:
    assert reconnect_decision("telegram", signal) == decision


def test_server_errors_are_retried() -> None:
    result = send_result(parse_response(502, PROXY_502_PAGE))
    assert result.retryable and result.error_code == "server_error"


def test_backoff_doubles_to_a_minute_with_bounded_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_s(n, rng) for n in range(1, 12)]
    assert 0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4
    assert all(48 <= d <= 72 for d in delays[7:])
    assert backoff_s(1, rng, minimum_s=5) >= 5
    assert backoff_s(10**6, rng) <= 72


@pytest.mark.parametrize(
    ("stored", "expected"), [(None, None), ("815000002", 815000002), ("x", None), ("-3", None)]
)
def test_parse_offset(stored: str | None, expected: int | None) -> None:
    assert parse_offset(stored) == expected


# Property tests: nothing but TelegramProtocolError escapes, and offsets only move forward.

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)
KEYS = st.sampled_from(
    [
        "update_id",
        "message",
        "chat",
        "id",
        "type",
        "from",
        "is_bot",
        "text",
        "entities",
        "offset",
        "length",
        "message_id",
        "date",
        "reply_to_message",
        "user",
        "username",
    ]
)
VALUES = st.one_of(
    st.integers(-5, 50),
    st.sampled_from(
        [
            "private",
            "group",
            "supergroup",
            "channel",
            "mention",
            "bot_command",
            "@pi_appliance_bot",
            "/x@pi_appliance_bot",
        ]
    ),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.text(st.characters(categories=["Cs", "So", "Ll", "Zs"]), max_size=6),  # lone surrogates
)
# Shaped like updates, so the deep branches are reached, not just the outer type checks.
UPDATEISH = st.recursive(
    VALUES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=7),
    max_leaves=40,
)


def _only_protocol_errors(call: Any) -> None:
    try:
        call()
    except TelegramProtocolError as err:
        assert isinstance(err, ApplianceError) and err.code == "telegram_malformed"


@given(st.integers(100, 599), st.binary(max_size=200) | JSON.map(lambda j: json.dumps(j).encode()))
def test_any_response_parses_or_raises_the_protocol_error(status: int, data: bytes) -> None:
    _only_protocol_errors(lambda: parse_response(status, data))


@given(JSON)
def test_any_get_me_result_parses_or_raises_the_protocol_error(result: Any) -> None:
    _only_protocol_errors(lambda: parse_me(result))


@given(st.one_of(JSON, UPDATEISH, st.lists(UPDATEISH, max_size=6)), st.none() | st.integers(-3, 60))
def test_any_updates_parse_or_raise_and_the_offset_never_goes_back(
    result: Any, offset: int | None
) -> None:
    try:
        batch = parse_updates(result, BOT, offset)
    except TelegramProtocolError:
        return
    if offset is not None:
        assert batch.next_offset is not None and batch.next_offset >= offset
    ids = [
        u["update_id"] for u in result if isinstance(u, dict) and type(u.get("update_id")) is int
    ]
    for update_id in ids:
        if offset is None or update_id >= offset:
            assert batch.next_offset is not None and batch.next_offset > update_id


@given(st.lists(st.integers(0, 10**6), max_size=10), st.integers(0, 10**6))
def test_consecutive_batches_never_move_the_offset_back(ids: list[int], start: int) -> None:
    offset: int | None = start
    for update_id in ids:
        update = recorded("update_private_text")
        update["update_id"] = update_id
        next_offset = parse_updates([update], BOT, offset).next_offset
        assert next_offset is not None and offset is not None and next_offset >= offset
        offset = next_offset


@given(st.text(max_size=30), st.text(max_size=30))
def test_a_mention_anywhere_is_found_and_removed(before: str, after: str) -> None:
    prefix = before + " " if before else ""
    text = f"{prefix}@pi_appliance_bot {after}"
    update = recorded("update_group_mention")
    update["message"]["text"] = text
    offset = len(prefix.encode("utf-16-le")) // 2
    update["message"]["entities"] = [{"offset": offset, "length": 17, "type": "mention"}]
    event = parse_update(update, BOT)
    assert event is not None and event.mentions_bot
    assert "@pi_appliance_bot" not in event.text or "@pi_appliance_bot" in before + after


ENTITY = st.fixed_dictionaries(
    {
        "offset": st.integers(-2, 40),
        "length": st.integers(-1, 40),
        "type": st.sampled_from(["mention", "bot_command", "text_mention", "bold", "url"]),
    },
    optional={"user": st.fixed_dictionaries({"id": st.sampled_from([BOT.id, 5])})},
)


@given(
    st.text(st.characters(categories=["Cs", "So", "Ll", "Zs", "Po"]), max_size=30)
    | st.sampled_from(["@pi_appliance_bot hi", "/status@pi_appliance_bot", "👋 @PI_APPLIANCE_BOT"]),
    st.lists(ENTITY, max_size=4),
)
def test_any_text_and_entities_parse_or_raise_the_protocol_error(
    text: str, entities: list[dict[str, Any]]
) -> None:
    update = recorded("update_group_mention")
    update["message"]["text"] = text
    update["message"]["entities"] = entities
    _only_protocol_errors(lambda: parse_update(update, BOT))
