"""The Telegram Bot API's wire format: responses, updates, sendMessage (research §5.3). Pure.

Bytes or decoded JSON in; `InboundEvent`s, offsets, request payloads and `SendResult`s out.
No sockets, no clock, no logging. Anything that is not the documented shape raises
`TelegramProtocolError` and nothing else, so the I/O shell skips it and keeps polling.

Choices (docs/reference/telegram.md):

- Only `message` updates are asked for (`allowed_updates`). An edit (`edited_message`) of a
  message that was already answered would be answered twice; channel posts are not chats.
- `event_id` is `<chat_id>:<message_id>`, not the `update_id`. A message keeps its id for good,
  so a re-read after a crash dedupes, and the hub's `reply_to` (the event id) tells `send()`
  which message to reply to. `update_id`s are not stable enough: after a week without updates
  Telegram picks the next one at random, and the hub remembers event ids for a week.
- Text messages only: captions, stickers, service messages and messages from bots (other bots,
  and our own echo) produce no event, yet their update still advances the offset.
- A message mentions the bot when a `mention` entity names its @username, a `bot_command` is
  for no bot or for this one, or it replies to one of the bot's messages. Mentions of the bot
  and a command's `@username` suffix are removed from the text.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage, SendResult
from appliance.errors import ApplianceError

PLATFORM = "telegram"
MAX_TEXT_CHARS = 4096
MAX_UPDATES = 100  # getUpdates `limit`: 1 to 100
ALLOWED_UPDATES = ("message",)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER = 0.2  # ± fraction of the delay
CONFLICT_MIN_S = 5.0  # two pollers retrying fast would keep terminating each other

_CHAT_KINDS = {"private": ChatKind.DIRECT, "group": ChatKind.GROUP, "supergroup": ChatKind.GROUP}


class TelegramProtocolError(ApplianceError, ValueError):
    """A Bot API response or update did not have the documented shape."""

    code = "telegram_malformed"


@dataclass(frozen=True)
class ApiOk:
    """`{"ok": true, "result": …}`."""

    result: Any


@dataclass(frozen=True)
class ApiError:
    """`{"ok": false, "error_code", "description", "parameters"}`, or a bare HTTP 5xx."""

    error_code: int
    description: str
    retry_after_s: float | None = None


ApiReply = ApiOk | ApiError


@dataclass(frozen=True)
class BotIdentity:
    """Who the bot is, from getMe."""

    id: int
    username: str


@dataclass(frozen=True)
class UpdateBatch:
    """What one getUpdates result holds: events to emit, the offset to ask for next."""

    events: tuple[InboundEvent, ...]
    next_offset: int | None
    ignored: int = 0  # updates that carry no answerable text (bots, photos, edits, …)
    malformed: int = 0  # updates skipped because they did not have the documented shape


def parse_response(status: int, body: bytes | str) -> ApiReply:
    """One Bot API HTTP response; a 5xx without a Bot API body (a proxy's page) is an ApiError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        if status >= 500:
            return ApiError(status, f"HTTP {status} without a Bot API body")
        raise TelegramProtocolError(
            f"The Bot API answered HTTP {status} with a body that is not JSON; it is skipped."
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        if status >= 500:
            return ApiError(status, f"HTTP {status} without a Bot API body")
        raise TelegramProtocolError(
            f"The Bot API answered HTTP {status} without a boolean `ok`; it is skipped."
        )
    if data["ok"]:
        if "result" not in data:
            raise TelegramProtocolError("A Bot API response has ok=true but no `result`.")
        return ApiOk(data["result"])
    return _api_error(status, data)


def _api_error(status: int, data: dict[str, Any]) -> ApiError:
    code = data.get("error_code")
    if not _is_int(code):
        code = status  # the HTTP status equals error_code on the real API
    description = data.get("description")
    if not isinstance(description, str):
        description = f"error {code}"
    parameters = data.get("parameters")
    retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
    wait_s = _seconds(retry_after)
    return ApiError(code, description, wait_s if wait_s is not None and wait_s >= 0 else None)


def parse_me(result: Any) -> BotIdentity:
    """The bot's id and @username from a getMe result."""
    if not isinstance(result, dict):
        raise TelegramProtocolError("getMe returned something other than a User object.")
    bot_id, username = result.get("id"), result.get("username")
    if not _is_int(bot_id) or not isinstance(username, str) or not username:
        raise TelegramProtocolError("getMe returned a User without an id or a username.")
    return BotIdentity(bot_id, username)


def get_updates_params(offset: int | None, timeout_s: int) -> dict[str, Any]:
    """The getUpdates parameters: long-poll for `timeout_s`, confirming updates below `offset`."""
    params: dict[str, Any] = {
        "timeout": timeout_s,
        "limit": MAX_UPDATES,
        "allowed_updates": list(ALLOWED_UPDATES),
    }
    if offset is not None:
        params["offset"] = offset
    return params


def parse_updates(result: Any, bot: BotIdentity, offset: int | None) -> UpdateBatch:
    """A getUpdates result as events and the next offset, which never goes below `offset`.

    Updates below `offset` were confirmed already and are dropped. A malformed update with a
    usable `update_id` is skipped but still confirmed, so one bad update cannot stall polling.
    """
    if not isinstance(result, list):
        raise TelegramProtocolError("getUpdates returned something other than a list.")
    events: list[InboundEvent] = []
    ignored = malformed = 0
    next_offset = offset
    for update in result:
        update_id = update.get("update_id") if isinstance(update, dict) else None
        if not _is_int(update_id):
            malformed += 1
            continue
        if offset is not None and update_id < offset:
            continue
        next_offset = update_id + 1 if next_offset is None else max(next_offset, update_id + 1)
        try:
            event = parse_update(update, bot)
        except TelegramProtocolError:
            malformed += 1
            continue
        if event is None:
            ignored += 1
        else:
            events.append(event)
    return UpdateBatch(tuple(events), next_offset, ignored, malformed)


def parse_update(update: dict[str, Any], bot: BotIdentity) -> InboundEvent | None:
    """One Update as an event; None for updates that get no answer."""
    message = update.get("message")
    if message is None:
        return None  # edited_message, channel_post, callback_query, …: not asked for
    if not isinstance(message, dict):
        raise TelegramProtocolError("An update's `message` is not a Message object.")
    return parse_message(message, bot)


def parse_message(message: dict[str, Any], bot: BotIdentity) -> InboundEvent | None:
    """One Message as an event; None for messages without text, from bots, or in channels."""
    message_id, chat, sender = message.get("message_id"), message.get("chat"), message.get("from")
    if not _is_int(message_id) or not isinstance(chat, dict) or not _is_int(chat.get("id")):
        raise TelegramProtocolError("A Message lacks a message_id or a chat with an id.")
    if sender is not None and (not isinstance(sender, dict) or not _is_int(sender.get("id"))):
        raise TelegramProtocolError("A Message's `from` is not a User with an id.")
    chat_type = chat.get("type")
    kind = _CHAT_KINDS.get(chat_type) if isinstance(chat_type, str) else None
    text = message.get("text")
    if kind is None or sender is None or sender.get("is_bot") is True or not isinstance(text, str):
        return None
    chat_id = str(chat["id"])
    mentioned, clean = _mentions(text, message.get("entities"), bot)
    return InboundEvent(
        platform=PLATFORM,
        event_id=event_id(chat_id, message_id),
        chat_id=chat_id,
        chat_kind=kind,
        sender_id=str(sender["id"]),
        text=clean,
        mentions_bot=mentioned or _replies_to_bot(message, bot),
        reply_to=_reply_to(message, chat_id),
        ts=_seconds(message.get("date")) or 0.0,
        raw=message,
    )


def event_id(chat_id: str, message_id: int) -> str:
    """The event id of a message: unique per bot, stable across re-reads."""
    return f"{chat_id}:{message_id}"


def _replies_to_bot(message: dict[str, Any], bot: BotIdentity) -> bool:
    replied = message.get("reply_to_message")
    author = replied.get("from") if isinstance(replied, dict) else None
    return isinstance(author, dict) and author.get("id") == bot.id


def _reply_to(message: dict[str, Any], chat_id: str) -> str | None:
    replied = message.get("reply_to_message")
    replied_id = replied.get("message_id") if isinstance(replied, dict) else None
    return event_id(chat_id, replied_id) if _is_int(replied_id) else None


def _mentions(text: str, entities: Any, bot: BotIdentity) -> tuple[bool, str]:
    """Whether the entities address the bot, and the text without the bot's @mentions."""
    if entities is None:
        return False, text
    if not isinstance(entities, list):
        raise TelegramProtocolError("A Message's `entities` is not a list.")
    try:
        units = text.encode("utf-16-le")  # entity offsets count UTF-16 code units
    except UnicodeEncodeError as err:  # a lone surrogate, which JSON's \uD800 can carry
        raise TelegramProtocolError("A Message's text is not valid Unicode.") from err
    handle = "@" + bot.username.lower()
    mentioned, cuts = False, []
    for entity in entities:
        start, end, kind = _span(entity, len(units) // 2)
        piece = _utf16_slice(units, start, end)
        if kind == "mention" and piece.lower() == handle:
            mentioned = True
            cuts.append((start, end))
        elif kind == "bot_command":
            command, _, target = piece.partition("@")
            if not target or "@" + target.lower() == handle:
                mentioned = True
            if target and "@" + target.lower() == handle:
                cuts.append((start + _utf16_len(command), end))
        elif kind == "text_mention" and _mentioned_user(entity) == bot.id:
            mentioned = True
    return mentioned, _cut(units, cuts) if cuts else text


def _span(entity: Any, length: int) -> tuple[int, int, Any]:
    if not isinstance(entity, dict):
        raise TelegramProtocolError("A MessageEntity is not an object.")
    start, size = entity.get("offset"), entity.get("length")
    if not _is_int(start) or not _is_int(size) or start < 0 or size < 0 or start + size > length:
        raise TelegramProtocolError("A MessageEntity's offset or length is outside the text.")
    return start, start + size, entity.get("type")


def _mentioned_user(entity: dict[str, Any]) -> Any:
    user = entity.get("user")
    return user.get("id") if isinstance(user, dict) else None


def _utf16_slice(units: bytes, start: int, end: int) -> str:
    try:
        return units[2 * start : 2 * end].decode("utf-16-le")
    except UnicodeDecodeError as err:
        raise TelegramProtocolError("A MessageEntity splits a character in two.") from err


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _cut(units: bytes, cuts: list[tuple[int, int]]) -> str:
    """The text without the spans in `cuts`, with the spaces around each cut merged."""
    pieces, position = [], 0
    for start, end in sorted(cuts):
        if start < position:
            continue  # overlapping entities: the first one wins
        pieces.append(_utf16_slice(units, position, start))
        position = end
    pieces.append(_utf16_slice(units, position, len(units) // 2))
    text = pieces[0]
    for piece in pieces[1:]:
        left, right = text.rstrip(" "), piece.lstrip(" ")
        if not left.strip():
            right = right.lstrip(",:; ")  # "@bot, how hot is it?" addresses the bot
        glued = not left or not right or left.endswith("\n") or right[0] in "\n,.;:!?)"
        text = left + ("" if glued else " ") + right
    return text.strip()


def send_message_payload(message: OutboundMessage) -> dict[str, Any]:
    """The sendMessage parameters: plain text (no parse_mode), a reply when `reply_to` is set."""
    payload: dict[str, Any] = {"chat_id": _chat_id(message.chat_id), "text": message.text}
    replied = reply_message_id(message.chat_id, message.reply_to)
    if replied is not None:
        # The original may have been deleted meanwhile; send anyway rather than fail with 400.
        payload["reply_parameters"] = {"message_id": replied, "allow_sending_without_reply": True}
    return payload


def reply_message_id(chat_id: str, reply_to: str | None) -> int | None:
    """The message id in an event id `<chat_id>:<message_id>` of the same chat, or a bare id."""
    if not reply_to:
        return None
    chat, _, message_id = reply_to.rpartition(":")
    if chat and chat != chat_id:
        return None
    try:
        return int(message_id)
    except ValueError:
        return None


def _chat_id(chat_id: str) -> int | str:
    """Numeric chat ids as numbers; `@channelusername` stays a string."""
    try:
        return int(chat_id)
    except ValueError:
        return chat_id


def send_result(reply: ApiReply) -> SendResult:
    """What a sendMessage reply means for the hub: sent, retry later, or give up."""
    if isinstance(reply, ApiOk):
        sent = reply.result
        message_id = sent.get("message_id") if isinstance(sent, dict) else None
        return SendResult.sent(str(message_id) if _is_int(message_id) else None)
    code, description = reply.error_code, reply.description.lower()
    if code == 429:
        return SendResult.retry("rate_limited", reply.retry_after_s)
    if code >= 500:
        return SendResult.retry("server_error")
    return SendResult.failed(_failure_code(code, description))


def _failure_code(code: int, description: str) -> str:
    """A stable error code for a sendMessage failure that a retry would not fix."""
    if "too long" in description:
        return "too_long"
    if "chat not found" in description:
        return "chat_not_found"
    if "blocked by the user" in description:
        return "bot_blocked"
    if "upgraded to a supergroup" in description:
        return "chat_migrated"
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden"}.get(code, f"http_{code}")


def backoff_s(failures: int, rng: random.Random, *, minimum_s: float = 0.0) -> float:
    """Seconds to wait after `failures` failures in a row: 1 s doubling to 60 s, ±20 % jitter."""
    doublings = max(0, min(failures, 32) - 1)
    base_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * float(2**doublings))
    return max(minimum_s, base_s * (1 + BACKOFF_JITTER * (2 * rng.random() - 1)))


def parse_offset(stored: str | None) -> int | None:
    """A persisted offset; None when there is none or it is unreadable."""
    if stored is None or not re.fullmatch(r"\d{1,18}", stored.strip()):
        return None
    return int(stored)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: Any) -> float | None:
    """A JSON number as finite seconds; None for anything else."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None
