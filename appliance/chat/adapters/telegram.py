"""Telegram through the Bot API: getMe, long polling with a persisted offset, sendMessage.

At-least-once: every event of a getUpdates batch is emitted (the hub has it on disk when
`emit` returns) before the next offset is saved and sent, so a crash re-reads a batch instead
of losing it; the stable event ids let the hub drop the repeats (research §5.3). Failures back
off with jitter on the injected clock; whether to stop is `reconnect_decision`'s call (401).
The wire format is `telegram_protocol.py`; this module only moves bytes. The bot token is part
of every URL path, so URLs and aiohttp's error texts are never logged unredacted.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp

from appliance.chat.adapter import AdapterContext, AdapterStatus
from appliance.chat.adapters.telegram_protocol import (
    CONFLICT_MIN_S,
    MAX_TEXT_CHARS,
    PLATFORM,
    ApiError,
    ApiOk,
    ApiReply,
    BotIdentity,
    TelegramProtocolError,
    backoff_s,
    get_updates_params,
    parse_me,
    parse_offset,
    parse_response,
    parse_updates,
    send_message_payload,
    send_result,
)
from appliance.chat.events import OutboundMessage, SendResult
from appliance.chat.policy import reconnect_decision, redact
from appliance.clock import Clock, SystemClock
from appliance.config import TelegramAdapterConfig

_LOGGER = logging.getLogger(__name__)

OFFSET_KEY = "offset"
REQUEST_TIMEOUT_S = 30.0
POLL_GRACE_S = 10.0  # the HTTP timeout of a long poll must exceed its `timeout` (research §5.3)


@dataclass(frozen=True)
class NoAnswer:
    """No usable Bot API answer: refused, reset, timed out (`unreachable`), or `malformed`."""

    code: str
    detail: str

    @classmethod
    def malformed(cls, err: TelegramProtocolError) -> NoAnswer:
        """A response that is not the documented shape."""
        return cls("malformed", str(err))


Failure = ApiError | NoAnswer
Outcome = ApiReply | NoAnswer


class Stopped(Exception):
    """A failure a retry cannot fix (401, 404): the adapter reported FAILED and stops."""


class TelegramAdapter:
    """One Telegram bot, polled with getUpdates."""

    platform = PLATFORM
    max_text_chars = MAX_TEXT_CHARS
    trusted = False
    connection_bound = False  # chats outlive the process: replies go through the durable outbox

    def __init__(
        self,
        cfg: TelegramAdapterConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._token = cfg.token.get_secret_value()
        self._base = f"{cfg.api_base.rstrip('/')}/bot{self._token}"
        self._session: aiohttp.ClientSession | None = None  # for sends while run() runs
        self._ready = False
        self._failures = 0

    async def run(self, ctx: AdapterContext) -> None:
        """Poll until cancelled; return after reporting FAILED when the token is refused."""
        self._ready, self._failures = False, 0
        ctx.set_status(AdapterStatus.CONNECTING)
        async with aiohttp.ClientSession() as session:
            self._session = session
            try:
                bot = await self._start(ctx, session)
                offset = parse_offset(await ctx.load(OFFSET_KEY))
                while True:
                    # A fresh connection for the poller after a 409 (research §5.3, OpenClaw
                    # #69787); the send session stays, so a reply in flight is not cut off.
                    async with aiohttp.ClientSession() as poller:
                        offset = await self._poll(ctx, poller, bot, offset)
            except Stopped:
                return
            finally:
                self._session = None

    async def _start(self, ctx: AdapterContext, session: aiohttp.ClientSession) -> BotIdentity:
        """Learn the bot's @username (getMe), then call deleteWebhook when configured."""
        while True:
            try:
                bot = parse_me((await self._call_until_ok(ctx, session, "getMe")).result)
                break
            except TelegramProtocolError as err:
                await self._back_off(ctx, NoAnswer.malformed(err))
        ctx.logger.info("Telegram bot @%s connected", bot.username)
        if self._cfg.delete_webhook:
            # A webhook makes every getUpdates fail with 409 (research §5.3).
            await self._call_until_ok(ctx, session, "deleteWebhook")
        return bot

    async def _call_until_ok(
        self, ctx: AdapterContext, session: aiohttp.ClientSession, method: str
    ) -> ApiOk:
        """Call a parameterless method until it succeeds, backing off between failures."""
        while not isinstance(
            outcome := await self._call(session, method, {}, REQUEST_TIMEOUT_S), ApiOk
        ):
            await self._back_off(ctx, outcome)
        return outcome

    async def _poll(
        self,
        ctx: AdapterContext,
        poller: aiohttp.ClientSession,
        bot: BotIdentity,
        offset: int | None,
    ) -> int | None:
        """Poll and emit until a 409 asks for a fresh connection; the offset reached."""
        while True:
            # Until a poll succeeds, ask with timeout 0 so recovery shows at once.
            timeout_s = self._cfg.poll_timeout_s if self._ready else 0
            params = get_updates_params(offset, timeout_s)
            outcome = await self._call(poller, "getUpdates", params, timeout_s + POLL_GRACE_S)
            if isinstance(outcome, ApiOk):
                try:
                    offset = await self._deliver(ctx, outcome.result, bot, offset)
                    continue
                except TelegramProtocolError as err:
                    outcome = NoAnswer.malformed(err)
            await self._back_off(ctx, outcome)
            if isinstance(outcome, ApiError) and outcome.error_code == 409:
                return offset

    async def _deliver(
        self, ctx: AdapterContext, result: Any, bot: BotIdentity, offset: int | None
    ) -> int | None:
        """Emit a batch's events, then persist the offset that confirms them."""
        batch = parse_updates(result, bot, offset)
        for event in batch.events:
            ctx.logger.debug("Telegram message %s in chat %s", event.event_id, event.chat_id)
            await ctx.emit(event)
        if batch.malformed:
            ctx.logger.warning("Skipped %d malformed Telegram updates", batch.malformed)
        if batch.next_offset is not None and batch.next_offset != offset:
            await ctx.save(OFFSET_KEY, str(batch.next_offset))
        if not self._ready:
            self._ready, self._failures = True, 0
            ctx.set_status(AdapterStatus.READY)
        return batch.next_offset

    async def _back_off(self, ctx: AdapterContext, outcome: Failure) -> None:
        """Report a failed call and wait before the next; raise Stopped when retrying is futile."""
        self._failures += 1
        delay_s = backoff_s(self._failures, self._rng)
        if isinstance(outcome, NoAnswer):
            detail = f"{outcome.code}: {outcome.detail}"
        elif reconnect_decision(PLATFORM, outcome.error_code) == "stop":
            self._fail(ctx, outcome)
        elif outcome.error_code == 409:
            detail = f"conflict: {outcome.description}"
            delay_s = max(delay_s, CONFLICT_MIN_S)
        elif outcome.error_code == 429 and outcome.retry_after_s is not None:
            detail = f"rate limited for {outcome.retry_after_s:g} s"
            delay_s = outcome.retry_after_s
        else:
            detail = f"error {outcome.error_code}: {outcome.description}"
        self._ready = False
        ctx.set_status(AdapterStatus.DEGRADED, detail)
        ctx.logger.warning("Telegram %s; retrying in %.1f s", detail, delay_s)
        await self._clock.sleep(delay_s)

    def _fail(self, ctx: AdapterContext, error: ApiError) -> NoReturn:
        detail = (
            f"the Bot API refused the token ({error.error_code} {error.description}); "
            "set a valid token from @BotFather and restart"
        )
        ctx.set_status(AdapterStatus.FAILED, detail)
        ctx.logger.error("Telegram stopped: %s", detail)
        raise Stopped(detail)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one text message, as a reply when `reply_to` names a message of that chat."""
        if len(message.text) > self.max_text_chars:
            return SendResult.failed("too_long")
        payload = send_message_payload(message)
        if self._session is not None:
            outcome = await self._call(self._session, "sendMessage", payload, REQUEST_TIMEOUT_S)
        else:
            async with aiohttp.ClientSession() as session:
                outcome = await self._call(session, "sendMessage", payload, REQUEST_TIMEOUT_S)
        if isinstance(outcome, NoAnswer):
            return SendResult.retry(outcome.code)
        result = send_result(outcome)
        if not result.ok:
            _LOGGER.debug("Telegram sendMessage to %s: %s", message.chat_id, result.error_code)
        return result

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        params: dict[str, Any],
        timeout_s: float,
    ) -> Outcome:
        """POST one Bot API method; every failure comes back as a value, never as an exception."""
        try:
            async with session.post(
                f"{self._base}/{method}",
                json=params,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return NoAnswer("unreachable", self._redacted(f"{type(err).__name__} {err}".strip()))
        try:
            return parse_response(status, body)
        except TelegramProtocolError as err:
            return NoAnswer.malformed(err)

    def _redacted(self, text: str) -> str:
        """`text` without the token, even a token too short for `redact`'s pattern."""
        return redact(text.replace(self._token, "[redacted]"))
