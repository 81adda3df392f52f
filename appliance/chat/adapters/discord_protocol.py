"""Discord Gateway v10 and REST, sans I/O: payloads in, events and payloads out (research §5.1).

Parses and validates gateway payloads, builds IDENTIFY, RESUME and HEARTBEAT, keeps the
resumable session (id, resume URL, last sequence), the heartbeat bookkeeping that detects a
zombie connection, the daily IDENTIFY budget, and the REST rate-limit buckets read from
response headers. Translates MESSAGE_CREATE into an `InboundEvent`.

Pure: no sockets, no asyncio, no clock, no logging. Time is passed in as `now` (monotonic
seconds). Every malformed payload raises `DiscordPayloadError` and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, IntFlag
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage
from appliance.errors import ApplianceError

GATEWAY_VERSION = 10
MAX_SEND_BYTES = 4096  # client payloads over this are closed with 4002
MAX_NONCE_CHARS = 25
# zlib-stream: every complete gateway message ends with the Z_SYNC_FLUSH marker (research §5.1).
ZLIB_SUFFIX = b"\x00\x00\xff\xff"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # READY of a bot in many guilds is large; nothing is larger
# Discord's epoch (2015-01-01) in Unix milliseconds; a snowflake's top 42 bits count from it.
_DISCORD_EPOCH_MS = 1_420_070_400_000
_SNOWFLAKE = re.compile(r"\d{1,20}")
# Message types a person writes: DEFAULT and REPLY (resources/message.mdx "Message Types").
_USER_MESSAGE_TYPES = frozenset({0, 19})


class DiscordPayloadError(ApplianceError, ValueError):
    """A gateway payload or REST response from Discord does not have the documented shape."""

    code = "discord_payload_invalid"


class Op(IntEnum):
    """Gateway opcodes (topics/opcodes-and-status-codes)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    RESUME = 6
    RECONNECT = 7
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Intents(IntFlag):
    """Gateway intents this appliance may ask for; ★ marks privileged ones."""

    GUILDS = 1 << 0
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15  # ★ enable in the developer portal, else close 4014


DEFAULT_INTENTS = Intents.GUILD_MESSAGES | Intents.DIRECT_MESSAGES | Intents.MESSAGE_CONTENT

# What each close code means for a person reading the status (research §5.1).
CLOSE_REASONS: dict[int, str] = {
    4000: "unknown error",
    4001: "unknown opcode",
    4002: "decode error",
    4003: "not authenticated",
    4004: "authentication failed: the bot token is wrong or was reset",
    4005: "already authenticated",
    4007: "invalid sequence on resume",
    4008: "rate limited",
    4009: "session timed out",
    4010: "invalid shard",
    4011: "sharding required: the bot is in too many guilds for one connection",
    4012: "invalid API version",
    4013: "invalid intents",
    4014: "disallowed intents: enable Message Content in the developer portal "
    "or set message_content_intent = false",
}


def close_reason(signal: int | str) -> str:
    """A sentence for a status line: what ended the connection."""
    if isinstance(signal, int):
        return f"closed with {signal} ({CLOSE_REASONS.get(signal, 'no reason given')})"
    return signal.replace("_", " ")


@dataclass(frozen=True)
class Payload:
    """One gateway payload: `s` and `t` are set only for dispatches (op 0)."""

    op: int
    d: Any
    s: int | None = None
    t: str | None = None


def parse_payload(data: str | bytes) -> Payload:
    """Parse one gateway frame; raise DiscordPayloadError when it is not a valid payload."""
    try:
        frame = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DiscordPayloadError("A gateway frame is not JSON; it was skipped.") from err
    if not isinstance(frame, dict):
        raise DiscordPayloadError("A gateway frame is not a JSON object; it was skipped.")
    op, seq, name = frame.get("op"), frame.get("s"), frame.get("t")
    if not _is_int(op):
        raise DiscordPayloadError("A gateway frame has no integer `op`; it was skipped.")
    if op == Op.DISPATCH:
        if not _is_int(seq) or seq < 0 or not isinstance(name, str):
            raise DiscordPayloadError("A dispatch lacks an integer `s` or a string `t`; skipped.")
        return Payload(op, frame.get("d"), seq, name)
    return Payload(op, frame.get("d"))


def heartbeat_interval_s(hello: Payload) -> float:
    """The heartbeat interval a HELLO asks for, in seconds."""
    interval = _field(hello.d, "heartbeat_interval")
    if not _is_number(interval) or not 0 < interval <= 3_600_000:
        raise DiscordPayloadError("HELLO has no usable `heartbeat_interval`.")
    return float(interval) / 1000


def encode(op: Op, d: Any) -> str:
    """A client payload as JSON text."""
    return json.dumps({"op": int(op), "d": d}, separators=(",", ":"))


def identify(token: str, intents: int, *, os_name: str = "linux") -> str:
    """The IDENTIFY payload (op 2)."""
    properties = {"os": os_name, "browser": "pi-appliance", "device": "pi-appliance"}
    return encode(Op.IDENTIFY, {"token": token, "intents": intents, "properties": properties})


def resume(token: str, session_id: str, seq: int | None) -> str:
    """The RESUME payload (op 6): the server replays every dispatch after `seq`."""
    return encode(Op.RESUME, {"token": token, "session_id": session_id, "seq": seq})


def heartbeat(seq: int | None) -> str:
    """The HEARTBEAT payload (op 1) with the last sequence number seen."""
    return encode(Op.HEARTBEAT, seq)


def gateway_url(base: str, *, zlib_stream: bool = False) -> str:
    """`base` with `v=10&encoding=json` (and `compress=zlib-stream`), keeping other parameters."""
    parts = urlsplit(base)
    ours = {"v": str(GATEWAY_VERSION), "encoding": "json"}
    if zlib_stream:
        ours["compress"] = "zlib-stream"
    query = {k: v for k, v in parse_qsl(parts.query) if k not in ("v", "encoding", "compress")}
    query = {**ours, **query}
    path = parts.path or "/"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


class ZlibStream:
    """zlib-stream transport compression: one inflate context for the whole connection.

    Binary frames are buffered until one ends with 00 00 ff ff; then the buffer inflates to one
    gateway message. A corrupt stream cannot recover (the context is shared), so an error here
    means the connection must be replaced.
    """

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj()
        self._buffer = bytearray()

    def feed(self, data: bytes) -> str | None:
        """The gateway message `data` completes, or None while more frames are needed."""
        self._buffer.extend(data)
        if len(self._buffer) > MAX_MESSAGE_BYTES:
            raise DiscordPayloadError("A compressed gateway message is too large.")
        if not data.endswith(ZLIB_SUFFIX):
            return None
        try:
            inflated = self._inflate.decompress(bytes(self._buffer), MAX_MESSAGE_BYTES)
            if self._inflate.unconsumed_tail:
                raise DiscordPayloadError("A gateway message inflates past the size limit.")
            return inflated.decode("utf-8")
        except (zlib.error, UnicodeDecodeError) as err:
            raise DiscordPayloadError("The zlib-stream from the gateway is corrupt.") from err
        finally:
            self._buffer.clear()


@dataclass
class Session:
    """What RESUME needs: the session id, where to resume, and the last sequence seen."""

    session_id: str | None = None
    resume_url: str | None = None
    seq: int | None = None
    user_id: str | None = None

    @property
    def resumable(self) -> bool:
        """True when a RESUME can be tried."""
        return bool(self.session_id and self.resume_url)

    def observe(self, payload: Payload) -> None:
        """Remember a dispatch's sequence number (only ever moving forward)."""
        if payload.s is not None and (self.seq is None or payload.s > self.seq):
            self.seq = payload.s

    def start(self, ready: Payload) -> None:
        """Take the session from a READY dispatch."""
        session_id = _field(ready.d, "session_id")
        resume_url = _field(ready.d, "resume_gateway_url")
        user_id = _field(_field(ready.d, "user"), "id")
        if not isinstance(session_id, str) or not session_id:
            raise DiscordPayloadError("READY has no `session_id`.")
        if not isinstance(resume_url, str) or not resume_url.startswith(("ws://", "wss://")):
            raise DiscordPayloadError("READY has no usable `resume_gateway_url`.")
        self.session_id, self.resume_url = session_id, resume_url
        self.user_id = _snowflake(user_id, "READY user.id")
        self.seq = ready.s

    def forget(self) -> None:
        """Drop the session: the next connection IDENTIFYs afresh."""
        self.session_id = self.resume_url = None
        self.seq = None

    def dumps(self) -> str:
        """The session as JSON, for the adapter's key-value store."""
        return json.dumps(
            {
                "session_id": self.session_id,
                "resume_url": self.resume_url,
                "seq": self.seq,
                "user_id": self.user_id,
            }
        )

    @classmethod
    def loads(cls, text: str | None) -> Session:
        """A stored session; an empty one when nothing usable was stored."""
        try:
            data = json.loads(text or "{}")
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        values = [data.get(k) for k in ("session_id", "resume_url", "seq", "user_id")]
        session_id, resume_url, seq, user_id = values
        return cls(
            session_id if isinstance(session_id, str) else None,
            resume_url if isinstance(resume_url, str) else None,
            seq if _is_int(seq) else None,
            user_id if isinstance(user_id, str) else None,
        )


@dataclass
class Heartbeat:
    """Heartbeat bookkeeping: a jittered first beat, then one per interval; ACKs tracked."""

    interval_s: float
    acked: bool = True
    beats: int = 0
    last_beat_at: float | None = None
    latency_s: float | None = None

    def first_delay_s(self, rng: random.Random) -> float:
        """When to send the first beat: `interval * random()` so a fleet does not beat at once."""
        return self.interval_s * rng.random()

    def beat(self, now: float) -> bool:
        """Record a beat going out; False means the last one was never ACKed (a zombie)."""
        if not self.acked:
            return False
        self.acked, self.last_beat_at = False, now
        self.beats += 1
        return True

    def ack(self, now: float) -> None:
        """Record a HEARTBEAT_ACK."""
        self.acked = True
        if self.last_beat_at is not None:
            self.latency_s = now - self.last_beat_at


@dataclass
class IdentifyBudget:
    """The daily IDENTIFY allowance from `session_start_limit` (1000 per 24 h)."""

    total: int
    remaining: int
    resets_at: float
    max_concurrency: int = 1

    @classmethod
    def parse(cls, limit: Any, now: float) -> IdentifyBudget:
        """The budget from a `session_start_limit` object; `reset_after` is in milliseconds."""
        values = [_field(limit, k) for k in ("total", "remaining", "reset_after")]
        concurrency = _field(limit, "max_concurrency")
        if not all(_is_int(v) and v >= 0 for v in values):
            raise DiscordPayloadError("session_start_limit lacks total/remaining/reset_after.")
        total, remaining, reset_after_ms = values
        return cls(
            total,
            remaining,
            now + reset_after_ms / 1000,
            concurrency if _is_int(concurrency) and concurrency > 0 else 1,
        )

    def wait_s(self, now: float) -> float:
        """Seconds until an IDENTIFY may go; 0 while some budget is left."""
        if self.remaining > 0 or now >= self.resets_at:
            return 0.0
        return self.resets_at - now

    def spend(self, now: float) -> None:
        """Count one IDENTIFY; after the reset the allowance is whole again."""
        if now >= self.resets_at:
            self.remaining = self.total
        self.remaining = max(0, self.remaining - 1)


@dataclass(frozen=True)
class GatewayInfo:
    """What GET /gateway/bot says: where to connect and how many IDENTIFYs are left."""

    url: str
    budget: IdentifyBudget


def parse_gateway_bot(body: Any, now: float) -> GatewayInfo:
    """Parse the GET /gateway/bot response."""
    url = _field(body, "url")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise DiscordPayloadError("GET /gateway/bot returned no usable `url`.")
    return GatewayInfo(url, IdentifyBudget.parse(_field(body, "session_start_limit"), now))


def invalid_session_resumable(payload: Payload) -> bool:
    """Whether an INVALID_SESSION (op 9) says the session may still be resumed."""
    return payload.d is True


def message_event(d: Any, bot_user_id: str | None) -> InboundEvent | None:
    """An InboundEvent from a MESSAGE_CREATE; None for bots, webhooks and system messages."""
    message_id = _snowflake(_field(d, "id"), "message id")
    channel_id = _snowflake(_field(d, "channel_id"), "channel_id")
    author = _field(d, "author")
    author_id = _snowflake(_field(author, "id"), "author.id")
    if _field(author, "bot") is True or _field(author, "system") is True:
        return None
    if author_id == bot_user_id or _field(d, "webhook_id") is not None:
        return None
    kind = _field(d, "type")
    if kind is not None and not (_is_int(kind) and kind in _USER_MESSAGE_TYPES):
        return None
    guild_id = _field(d, "guild_id")
    if guild_id is not None:
        _snowflake(guild_id, "guild_id")
    content = _field(d, "content")
    # Without MESSAGE_CONTENT, content is empty except in DMs and mentions (research §5.1).
    text = content if isinstance(content, str) else ""
    mentioned = bot_user_id is not None and bot_user_id in _mention_ids(_field(d, "mentions"))
    if bot_user_id is not None:
        text = re.sub(rf"\s*<@!?{bot_user_id}>\s*", " ", text)
    return InboundEvent(
        platform="discord",
        event_id=message_id,
        chat_id=channel_id,
        chat_kind=ChatKind.DIRECT if guild_id is None else ChatKind.GROUP,
        sender_id=author_id,
        text=text.strip(),
        mentions_bot=mentioned,
        reply_to=_reply_to(d),
        ts=_timestamp(_field(d, "timestamp"), message_id),
        raw=d,
    )


def _mention_ids(mentions: Any) -> set[str]:
    """The user ids in a message's `mentions` array."""
    if mentions is None:
        return set()
    if not isinstance(mentions, list):
        raise DiscordPayloadError("MESSAGE_CREATE `mentions` is not an array.")
    return {m["id"] for m in mentions if isinstance(m, dict) and isinstance(m.get("id"), str)}


def _reply_to(d: Any) -> str | None:
    """The id of the message this one replies to, when it is a reply."""
    reference = _field(d, "message_reference")
    message_id = _field(reference, "message_id") if isinstance(reference, dict) else None
    return message_id if isinstance(message_id, str) else None


def _timestamp(value: Any, message_id: str) -> float:
    """The message's ISO 8601 timestamp, or the time in its snowflake id when that is unusable."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except (ValueError, OverflowError):
            pass
    return ((int(message_id) >> 22) + _DISCORD_EPOCH_MS) / 1000


def nonce(idempotency_key: str) -> str:
    """A create-message nonce (≤ 25 characters) that is the same for the same key."""
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:MAX_NONCE_CHARS]


def create_message_body(message: OutboundMessage) -> dict[str, Any]:
    """The JSON body of POST /channels/{id}/messages for one outbound message."""
    body: dict[str, Any] = {
        "content": message.text,
        # Model output must never ping @everyone or roles (research §5.1).
        "allowed_mentions": {"parse": []},
    }
    if message.reply_to:
        # A deleted original should not make the reply fail.
        body["message_reference"] = {"message_id": message.reply_to, "fail_if_not_exists": False}
    if message.idempotency_key:
        # enforce_nonce: the same nonce within minutes returns the first message, not a new one.
        body["nonce"] = nonce(message.idempotency_key)
        body["enforce_nonce"] = True
    return body


@dataclass(frozen=True)
class RestError:
    """A Discord REST error body: its JSON error `code` (0 when absent) and message."""

    status: int
    code: int
    message: str

    @property
    def error_code(self) -> str:
        """The stable error code a SendResult carries: Discord's own code when it gave one."""
        return f"discord_{self.code}" if self.code else f"http_{self.status}"


def parse_rest_error(status: int, body: Any) -> RestError:
    """A REST error from its status and (possibly non-JSON) body; never raises."""
    code = _field(body, "code") if isinstance(body, dict) else None
    message = _field(body, "message") if isinstance(body, dict) else None
    return RestError(
        status,
        code if _is_int(code) else 0,
        message if isinstance(message, str) else f"HTTP {status}",
    )


@dataclass(frozen=True)
class RateLimited:
    """A 429: how long to wait, and whether it holds every route (global)."""

    retry_after_s: float
    is_global: bool
    scope: str


@dataclass
class _Bucket:
    remaining: int
    resets_at: float


@dataclass
class RouteBuckets:
    """REST rate-limit bookkeeping from response headers, keyed by bucket and major parameter.

    Discord says not to hard-code limits: the `X-RateLimit-Bucket` header names the bucket a
    route shares, and the channel id (the major parameter) splits it (topics/rate-limits).
    """

    _route_bucket: dict[str, str] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _global_until: float = float("-inf")

    def wait_s(self, route: str, major: str, now: float) -> float:
        """Seconds to wait before a request on `route` for `major` may go; 0 means go."""
        wait_s = self._global_until - now
        bucket = self._buckets.get(self._key(route, major))
        if bucket is not None and bucket.remaining <= 0:
            wait_s = max(wait_s, bucket.resets_at - now)
        return max(0.0, wait_s)

    def update(self, route: str, major: str, headers: Mapping[str, str], now: float) -> None:
        """Learn the bucket's state from a response's rate-limit headers."""
        name = headers.get("X-RateLimit-Bucket")
        if name:
            self._route_bucket[route] = name
        remaining = _header_number(headers, "X-RateLimit-Remaining")
        reset_after_s = _header_number(headers, "X-RateLimit-Reset-After")
        if remaining is not None and reset_after_s is not None:
            key = self._key(route, major)
            self._buckets[key] = _Bucket(int(remaining), now + reset_after_s)

    def limited(
        self, route: str, major: str, headers: Mapping[str, str], body: Any, now: float
    ) -> RateLimited:
        """Record a 429 and say how long to wait: the body's `retry_after`, else the header's."""
        self.update(route, major, headers, now)
        retry_after = _field(body, "retry_after") if isinstance(body, dict) else None
        if not _is_number(retry_after) or retry_after < 0:
            retry_after = _header_number(headers, "Retry-After") or 1.0
        is_global = (isinstance(body, dict) and body.get("global") is True) or headers.get(
            "X-RateLimit-Global", ""
        ).lower() == "true"
        scope = headers.get("X-RateLimit-Scope", "global" if is_global else "user")
        until = now + float(retry_after)
        if is_global:
            self._global_until = max(self._global_until, until)
        else:
            self._buckets[self._key(route, major)] = _Bucket(0, until)
        return RateLimited(float(retry_after), is_global, scope)

    def _key(self, route: str, major: str) -> str:
        return f"{self._route_bucket.get(route, route)}:{major}"


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    """A numeric header, or None when it is absent or not a finite non-negative number."""
    try:
        value = float(headers.get(name, ""))
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None


def _field(obj: Any, key: str) -> Any:
    """`obj[key]` when `obj` is a JSON object, else None."""
    return obj.get(key) if isinstance(obj, dict) else None


def _snowflake(value: Any, what: str) -> str:
    """A snowflake id (a string of digits), or DiscordPayloadError naming `what`."""
    if not isinstance(value, str) or not _SNOWFLAKE.fullmatch(value):
        raise DiscordPayloadError(f"The payload's {what} is not a snowflake id.")
    return value


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
