"""Who gets an answer, what logs may show, and when to reconnect: decided once for every platform.

`decide` applies the DM policy, pairing, allowlists and mention gating of research
adapters-provisioning §2.3 to one inbound event. `redact` masks tokens and phone numbers before
text reaches a log (STYLE rule 10). `reconnect_decision` maps a platform's close code, status
or disconnect reason to reconnect, resume or stop, so that one place owns that choice
(research §2.5: reconnect storms came from split ownership).

Pure: no I/O, no asyncio, no clock, no logging. `decide` may add a pending request to the
`Pairing` it is given; the caller persists that state afterwards.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from appliance.chat.events import ChatKind, InboundEvent
from appliance.chat.pairing import CODE_TTL_S, Pairing, PairingOutcome

DmPolicy = Literal["pairing", "allowlist", "open", "disabled"]
GroupPolicy = Literal["allowlist", "open"]
Reconnect = Literal["reconnect", "resume", "stop"]

EVERYONE = "*"


class IgnoreReason(StrEnum):
    """Why an event gets no answer; the value is what logs show."""

    NO_MENTION = "group message without mention"
    NOT_ALLOWED = "not allowed"
    PAIRING_PENDING = "pairing pending"
    TOO_MANY_PENDING = "too many pending"
    DMS_DISABLED = "dms disabled"
    EMPTY_TEXT = "empty text"


@dataclass(frozen=True)
class Answer:
    """Answer the event; `text` is its stripped text."""

    text: str
    is_owner: bool = False


@dataclass(frozen=True)
class PairingCode:
    """Reply with a pairing code instead of an answer; `text` is the reply to send."""

    code: str
    text: str


@dataclass(frozen=True)
class Ignore:
    """Send nothing."""

    reason: IgnoreReason


Decision = Answer | PairingCode | Ignore


@dataclass(frozen=True)
class PlatformPolicy:
    """Who one platform's adapter answers (config `dm_policy`, `group_policy`, `allow_from`)."""

    dm_policy: DmPolicy = "pairing"
    group_policy: GroupPolicy = "allowlist"
    allow_from: frozenset[str] = frozenset()


# An owner approves from chat with `approve CODE`, `/approve CODE` or `pair approve CODE`.
_APPROVAL = re.compile(r"^/?(?:pair\s+)?approve\s+([A-Za-z0-9]{8})\s*$", re.IGNORECASE)


def approval_code(text: str) -> str | None:
    """The pairing code in an owner's approval message, or None when it is not one."""
    found = _APPROVAL.match(text.strip())
    return found.group(1).upper() if found else None


def decide(
    event: InboundEvent,
    *,
    dm_policy: DmPolicy,
    allow_from: frozenset[str],
    pairing: Pairing,
    now: float,
    group_policy: GroupPolicy = "allowlist",
    rng: random.Random | None = None,
) -> Decision:
    """Whether and how to answer one inbound event."""
    text = event.text.strip()
    if not text:
        return Ignore(IgnoreReason.EMPTY_TEXT)
    if event.chat_kind is ChatKind.GROUP:
        return _decide_group(event, text, allow_from, pairing, group_policy)
    return _decide_direct(event, text, dm_policy, allow_from, pairing, now, rng)


def _decide_group(
    event: InboundEvent,
    text: str,
    allow_from: frozenset[str],
    pairing: Pairing,
    group_policy: GroupPolicy,
) -> Decision:
    """Groups: the bot must be mentioned, and under `allowlist` the sender must be let in."""
    # An open group policy still keeps mention gating (research §2.3).
    if not event.mentions_bot:
        return Ignore(IgnoreReason.NO_MENTION)
    if group_policy == "open" or _is_let_in(event, allow_from, pairing):
        return _answer(event, text, pairing)
    return Ignore(IgnoreReason.NOT_ALLOWED)


def _decide_direct(
    event: InboundEvent,
    text: str,
    dm_policy: DmPolicy,
    allow_from: frozenset[str],
    pairing: Pairing,
    now: float,
    rng: random.Random | None,
) -> Decision:
    """DMs: the four policies of research §2.3; strangers under `pairing` get one code."""
    if dm_policy == "disabled":
        return Ignore(IgnoreReason.DMS_DISABLED)
    if dm_policy == "open" or _is_let_in(event, allow_from, pairing):
        return _answer(event, text, pairing)
    if dm_policy == "allowlist":
        return Ignore(IgnoreReason.NOT_ALLOWED)
    return _request_pairing(event, pairing, now, rng)


def _request_pairing(
    event: InboundEvent, pairing: Pairing, now: float, rng: random.Random | None
) -> Decision:
    """A code for a new stranger; silence while one is pending or the platform is full."""
    result = pairing.request(event.platform, event.sender_id, now, rng)
    if result.code is not None:
        return PairingCode(result.code, pairing_message(event.platform, result.code))
    if result.outcome is PairingOutcome.ALREADY_PENDING:
        return Ignore(IgnoreReason.PAIRING_PENDING)
    return Ignore(IgnoreReason.TOO_MANY_PENDING)


def _is_let_in(event: InboundEvent, allow_from: frozenset[str], pairing: Pairing) -> bool:
    """True when config allows the sender or the owner approved them."""
    return (
        EVERYONE in allow_from
        or event.sender_id in allow_from
        or pairing.is_approved(event.platform, event.sender_id)
    )


def _answer(event: InboundEvent, text: str, pairing: Pairing) -> Answer:
    """An answer, marked when the sender owns the appliance on this platform."""
    return Answer(text, is_owner=pairing.is_owner(event.platform, event.sender_id))


def pairing_message(platform: str, code: str) -> str:
    """The reply that hands a stranger their pairing code."""
    minutes = round(CODE_TTL_S / 60)
    return (
        f"This assistant only answers people its owner has approved.\n"
        f"Pairing code: {code}\n"
        f"Ask the owner to approve this code for {platform}. It expires in {minutes} minutes."
    )


# Patterns are checked in order; tokens before phone numbers, because a token may hold digits.
_SECRETS = (
    # Discord bot token: base64 user id, timestamp, HMAC (research §5.1).
    (re.compile(r"(?<![\w-])[\w-]{24,}\.[\w-]{6}\.[\w-]{27,}"), "[redacted]"),
    # Telegram bot token `<bot id>:<35 chars>`, also inside `/bot<token>/` URLs (§5.3).
    (re.compile(r"(?<!\d)\d{8,10}:[\w-]{35}(?![\w-])"), "[redacted]"),
    # Slack bot, user and app-level tokens (§5.2).
    (re.compile(r"\bx(?:ox[abposr]|app)-[\w-]+"), "[redacted]"),
    # Any `Authorization: Bearer …` credential (Slack, WhatsApp Graph, Matrix).
    (re.compile(r"(?i)\b(bearer)\s+[\w.~+/-]+=*"), r"\1 [redacted]"),
    # E.164-ish phone numbers: `+` then 8 to 15 digits, single spaces or dashes allowed.
    (re.compile(r"\+\d(?:[ -]?\d){7,14}(?![\d])"), "[phone]"),
)


def redact(text: str) -> str:
    """`text` with bot tokens, bearer credentials and phone numbers masked, for logs."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


# Discord Gateway close codes (discord-api-docs topics/opcodes-and-status-codes, research
# §5.1): these need a person (bad token, shard or version settings, intents not enabled).
_DISCORD_STOP = frozenset({4004, 4010, 4011, 4012, 4013, 4014})
# 4007 invalid seq and 4009 session timed out: the session is gone, IDENTIFY afresh.
_DISCORD_FRESH = frozenset({4007, 4009})
# 1000 and 1001 invalidate the session ("Closing with 1000 or 1001 invalidates the session").
_DISCORD_INVALIDATED = frozenset({1000, 1001})
# Non-numeric gateway signals: op 7 RECONNECT and op 9 INVALID_SESSION d:true resume; op 9
# d:false means open a new connection and IDENTIFY again (gateway.mdx "Resuming").
_DISCORD_SIGNALS: dict[str, Reconnect] = {
    "reconnect": "resume",
    "invalid_session_resumable": "resume",
    "invalid_session": "reconnect",
    "zombie": "resume",  # no HEARTBEAT_ACK between two heartbeats: close non-1000, RESUME
    # The connection never got going (no HELLO, a malformed one, REST or socket unreachable):
    # the session, if any, is still Discord's to keep, so try to RESUME it after backoff.
    "hello_timeout": "resume",
    "bad_hello": "resume",
    "unreachable": "resume",
    "decode_error": "resume",  # a corrupt zlib stream: a new connection, same session
    # GET /gateway/bot answered 401: the token is wrong or was reset; a person must fix it.
    "unauthorized": "stop",
}

_STOP_SIGNALS: dict[str, frozenset[str]] = {
    # Bot API: 401 Unauthorized means the token was revoked or is wrong (research §4); 404 Not
    # Found means the URL names no bot at all (a token of the wrong shape, or a wrong api_base).
    # 409 Conflict is another getUpdates consumer or a webhook (research §5.3, OpenClaw #69787):
    # the caller surfaces it in status and retries slowly on a fresh connection, so not here.
    "telegram": frozenset({"401", "404"}),
    # Socket Mode `disconnect` reason `link_disabled`: Socket Mode was switched off (§5.2).
    # The rest are Slack Web API auth errors from apps.connections.open: the token is dead.
    "slack": frozenset(
        {"link_disabled", "invalid_auth", "not_authed", "token_revoked", "account_inactive"}
    ),
    # Graph API OAuthException 190: access token expired or invalid (the 24 h temporary
    # token of research §5.4); a person must issue a new one.
    "whatsapp_cloud": frozenset({"190"}),
    # WhatsApp Web linking: the phone unlinked the device (research §2.5, Baileys 401).
    "whatsapp_web": frozenset({"logged_out", "401"}),
    # Client-Server API: the access token is not recognised, so /sync can never succeed.
    "matrix": frozenset({"M_UNKNOWN_TOKEN", "401"}),
}


def reconnect_decision(platform: str, signal: str | int) -> Reconnect:
    """What to do after a connection ended with `signal`: reconnect, resume or stop."""
    if platform == "discord":
        return _discord_decision(signal)
    if str(signal) in _STOP_SIGNALS.get(platform, frozenset()):
        return "stop"
    # Everything else is transient: a fresh connection with backoff. Telegram and Matrix keep
    # their place through the persisted offset or `since` token, not a resumable session.
    return "reconnect"


def _discord_decision(signal: str | int) -> Reconnect:
    """Discord: stop for settings a person must fix, resume where the session survives."""
    code = _as_int(signal)
    if code is None:
        return _DISCORD_SIGNALS.get(str(signal), "resume")
    if code in _DISCORD_STOP:
        return "stop"
    if code in _DISCORD_FRESH or code in _DISCORD_INVALIDATED:
        return "reconnect"
    # 4000 to 4008 and anything else, including 1006 with no close frame: "Any other code keeps
    # it resumable for a few minutes" (research §5.1).
    return "resume"


def _as_int(signal: str | int) -> int | None:
    """`signal` as a number when it is one."""
    if isinstance(signal, int):
        return signal
    return int(signal) if signal.strip().isdigit() else None
