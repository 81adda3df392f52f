"""The Discord adapter: Gateway v10 over `websockets` for messages in, REST over aiohttp out.

`run()` asks GET /gateway/bot where to connect and how many IDENTIFYs are left today, then
holds one gateway connection: HELLO → IDENTIFY (or RESUME with the persisted session), jittered
heartbeats on the injected clock, MESSAGE_CREATE → `ctx.emit`. Every way a connection ends
becomes a signal for `policy.reconnect_decision`, the one owner of reconnect choices
(research adapters-provisioning §2.5): resume, reconnect with a fresh IDENTIFY, or stop and
report FAILED. `send()` posts to /channels/{id}/messages with a nonce and `enforce_nonce`, so a
retried send never posts twice, and honours the route's rate-limit bucket.

The wire format lives in `discord_protocol.py`; this module only does the I/O. The bot token
never reaches a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from appliance import __version__
from appliance.chat.adapter import AdapterContext, AdapterStatus
from appliance.chat.adapters.discord_protocol import (
    DEFAULT_INTENTS,
    MAX_MESSAGE_BYTES,
    DiscordPayloadError,
    GatewayInfo,
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
    message_event,
    parse_gateway_bot,
    parse_payload,
    parse_rest_error,
    resume,
)
from appliance.chat.events import OutboundMessage, SendResult
from appliance.chat.policy import reconnect_decision
from appliance.clock import Clock, SystemClock
from appliance.config import DiscordAdapterConfig
from appliance.errors import ApplianceError

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

Signal = int | str  # a close code, or a named gateway signal of policy._DISCORD_SIGNALS

HELLO_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 30.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 120.0
STABLE_AFTER_S = 60.0  # a session READY this long resets the backoff
# Op 9 d:false: wait a random 1-5 s before IDENTIFYing again (gateway.mdx "Resuming").
INVALID_SESSION_WAIT_S = (1.0, 5.0)
# A bucket that resets sooner than this is waited out inside send(); later goes back to the hub.
MAX_LOCAL_WAIT_S = 10.0
# Any close code but 1000/1001 keeps the session resumable (research §5.1).
RESUMABLE_CLOSE_CODE = 4000
SESSION_KEY = "session"
ROUTE_CREATE_MESSAGE = "POST /channels/{channel.id}/messages"
USER_AGENT = f"DiscordBot (https://example.invalid/pi-appliance, {__version__})"


class _NoFrameDumps(logging.LoggerAdapter[logging.Logger]):
    """websockets' logger for the gateway minus DEBUG frame dumps: IDENTIFY holds the token."""

    def isEnabledFor(self, level: int) -> bool:
        """DEBUG is off whatever the level, so websockets never formats a frame."""
        return level > logging.DEBUG and super().isEnabledFor(level)


class DiscordUnauthorizedError(ApplianceError):
    """Discord refused the bot token over REST; a person must set a valid one."""

    code = "discord_unauthorized"


class DiscordUnavailableError(ApplianceError):
    """Discord's REST API could not be reached or gave an unusable answer; retried with backoff."""

    code = "discord_unavailable"


class DiscordAdapter:
    """Discord: Gateway v10 for inbound messages, REST for replies."""

    platform = "discord"
    max_text_chars = 2000
    trusted = False
    connection_bound = False  # channels outlive the process: replies go through the outbox

    def __init__(
        self,
        cfg: DiscordAdapterConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._token = cfg.token.get_secret_value()
        self._api_base = cfg.api_base.rstrip("/")
        self._intents = int(
            DEFAULT_INTENTS
            if cfg.message_content_intent
            else DEFAULT_INTENTS & ~Intents.MESSAGE_CONTENT
        )
        self._http: aiohttp.ClientSession | None = None
        self._buckets = RouteBuckets()
        self._session = Session()
        self._saved = ""
        self._budget: IdentifyBudget | None = None
        self._ready_since: float | None = None

    async def run(self, ctx: AdapterContext) -> None:
        """Hold a gateway connection until cancelled; return FAILED on a fatal close code."""
        ctx.set_status(AdapterStatus.CONNECTING)
        self._session = Session.loads(await ctx.load(SESSION_KEY))
        self._saved = self._session.dumps()
        async with self._new_http() as http:
            self._http = http
            try:
                await self._connect_loop(ctx)
            finally:
                self._http = None

    async def send(self, message: OutboundMessage) -> SendResult:
        """Post one message; a resend with the same idempotency key returns the first one."""
        if self._http is not None:
            return await self._create_message(self._http, message)
        async with self._new_http() as http:  # send() before run(): a session of its own
            return await self._create_message(http, message)

    def _new_http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            headers={"Authorization": f"Bot {self._token}", "User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        )

    # The gateway connection ---------------------------------------------------------------

    async def _connect_loop(self, ctx: AdapterContext) -> None:
        failures = 0
        while True:
            signal = await self._connect_once(ctx)
            decision = reconnect_decision("discord", signal)
            reason = close_reason(signal)
            if decision == "stop":
                self._stop(ctx, reason)
                return
            if decision == "reconnect":
                self._session.forget()
            await self._save_session(ctx)
            failures = 0 if self._was_stable() else failures + 1
            delay_s = self._delay_s(signal, failures)
            status = AdapterStatus.RESUMING if self._session.resumable else AdapterStatus.CONNECTING
            ctx.set_status(AdapterStatus.DEGRADED if failures > 2 else status, reason)
            _LOGGER.info(
                "Discord gateway %s; %s in %.1f s",
                reason,
                "resuming" if self._session.resumable else "identifying",
                delay_s,
            )
            await self._clock.sleep(delay_s)

    def _was_stable(self) -> bool:
        """Whether the connection that just ended was READY for a while.

        A session that drops soon after READY counts as a failure, so a server that accepts and
        then closes cannot pull the adapter into a fast loop of IDENTIFYs (research §5.1: that
        burns the daily budget and gets the token reset).
        """
        since = self._ready_since
        return since is not None and self._clock.monotonic() - since >= STABLE_AFTER_S

    def _stop(self, ctx: AdapterContext, reason: str) -> None:
        """Report FAILED and give up: reconnecting now would hit the same wall.

        `run()` then returns; the supervisor counts that as a crash, backs off, parks the adapter
        (the appliance shows `degraded`) and retries it rarely, so a fixed portal setting is
        picked up without hammering Discord.
        """
        ctx.set_status(AdapterStatus.FAILED, reason)
        _LOGGER.error("Discord gateway %s; not reconnecting", reason)

    def _delay_s(self, signal: Signal, failures: int) -> float:
        """Jittered backoff: 1-5 s after op 9, under 1 s after a working session, else doubling."""
        if signal == "invalid_session":
            return self._rng.uniform(INVALID_SESSION_WAIT_S[0], INVALID_SESSION_WAIT_S[1])
        if failures == 0:
            return self._rng.uniform(0.0, BACKOFF_BASE_S)
        ceiling_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0**failures)
        return ceiling_s * self._rng.uniform(0.5, 1.0)

    async def _connect_once(self, ctx: AdapterContext) -> Signal:
        """One gateway connection from connect to close; what ended it."""
        self._ready_since = None
        resuming = self._session.resumable
        try:
            url = self._session.resume_url if resuming else await self._identify_url(ctx)
        except DiscordUnauthorizedError:
            return "unauthorized"
        except DiscordUnavailableError as err:
            _LOGGER.warning("%s", err)
            return "unreachable"
        assert url is not None
        try:
            ws = await connect(
                gateway_url(url, zlib_stream=self._cfg.zlib_stream),
                ping_interval=None,  # Discord's own heartbeats detect dead peers
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                close_timeout=CLOSE_TIMEOUT_S,
                user_agent_header=USER_AGENT,
                logger=_NoFrameDumps(logging.getLogger(f"{__name__}.websocket")),
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as err:
            _LOGGER.warning("Discord gateway unreachable: %s", err)
            return "unreachable"
        try:
            return await self._converse(ws, ctx, resuming)
        except ConnectionClosed as err:
            return _close_code(err)
        except DiscordPayloadError as err:  # the zlib stream broke: its context cannot recover
            _LOGGER.warning("Discord gateway: %s", err)
            return "decode_error"
        finally:
            # Never 1000: that would end the session Discord keeps for a RESUME.
            await ws.close(RESUMABLE_CLOSE_CODE, "reconnecting")

    async def _identify_url(self, ctx: AdapterContext) -> str:
        """Where to IDENTIFY, once today's IDENTIFY budget allows one (waits until it does)."""
        while True:
            info = await self._gateway_bot()
            wait_s = info.budget.wait_s(self._clock.monotonic())
            if wait_s <= 0:
                self._budget = info.budget
                return self._cfg.gateway_url or info.url
            detail = f"daily IDENTIFY budget used up; next try in {wait_s:.0f} s"
            ctx.set_status(AdapterStatus.DEGRADED, detail)
            _LOGGER.warning("Discord %s", detail)
            await self._clock.sleep(wait_s)

    async def _gateway_bot(self) -> GatewayInfo:
        """GET /gateway/bot: the gateway URL and the session start limit."""
        assert self._http is not None
        try:
            async with self._http.get(f"{self._api_base}/gateway/bot") as response:
                status, body = response.status, await _json_body(response)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise DiscordUnavailableError(
                f"GET /gateway/bot failed ({type(err).__name__}); retrying with backoff."
            ) from err
        if status == 401:
            raise DiscordUnauthorizedError("Discord refused the bot token (HTTP 401).")
        if status != 200:
            raise DiscordUnavailableError(f"GET /gateway/bot answered HTTP {status}; retrying.")
        try:
            return parse_gateway_bot(body, self._clock.monotonic())
        except DiscordPayloadError as err:
            raise DiscordUnavailableError(f"{err} Retrying with backoff.") from err

    async def _converse(self, ws: ClientConnection, ctx: AdapterContext, resuming: bool) -> Signal:
        """HELLO, IDENTIFY or RESUME, then heartbeats and dispatches until the connection ends."""
        stream = ZlibStream() if self._cfg.zlib_stream else None
        hello = await self._hello(ws, stream)
        if not isinstance(hello, Payload):
            return hello
        beat = Heartbeat(heartbeat_interval_s(hello))
        if resuming and self._session.session_id is not None:
            ctx.set_status(AdapterStatus.RESUMING)
            await ws.send(resume(self._token, self._session.session_id, self._session.seq))
        else:
            await ws.send(identify(self._token, self._intents))
            if self._budget is not None:
                self._budget.spend(self._clock.monotonic())
        return await _first_of(self._heartbeat(ws, ctx, beat), self._receive(ws, ctx, beat, stream))

    async def _hello(self, ws: ClientConnection, stream: ZlibStream | None) -> Payload | Signal:
        """The HELLO that opens a connection, or the signal that came instead."""
        frame = await self._within(_next_message(ws, stream), HELLO_TIMEOUT_S)
        if frame is None:
            return "hello_timeout"
        try:
            payload = parse_payload(frame)
            if payload.op == Op.RECONNECT:  # it may come even instead of HELLO
                return "reconnect"
            if payload.op != Op.HELLO:
                raise DiscordPayloadError(f"The first payload was op {payload.op}, not HELLO.")
            heartbeat_interval_s(payload)
        except DiscordPayloadError as err:
            _LOGGER.warning("Discord gateway: %s", err)
            return "bad_hello"
        return payload

    async def _heartbeat(
        self, ws: ClientConnection, ctx: AdapterContext, beat: Heartbeat
    ) -> Signal:
        """Beat every interval; a beat whose predecessor was never ACKed means a zombie."""
        await self._clock.sleep(beat.first_delay_s(self._rng))
        while True:
            if not beat.beat(self._clock.monotonic()):
                _LOGGER.warning("Discord gateway sent no HEARTBEAT_ACK; reconnecting to resume")
                return "zombie"
            await ws.send(heartbeat(self._session.seq))
            await self._save_session(ctx)  # the sequence, at most once per interval
            await self._clock.sleep(beat.interval_s)

    async def _receive(
        self, ws: ClientConnection, ctx: AdapterContext, beat: Heartbeat, stream: ZlibStream | None
    ) -> Signal:
        """Handle payloads until one ends the connection."""
        while True:
            frame = await _next_message(ws, stream)
            try:
                payload = parse_payload(frame)
            except DiscordPayloadError as err:
                _LOGGER.warning("Discord gateway: %s", err)
                continue
            signal = await self._handle(ws, ctx, beat, payload)
            if signal is not None:
                return signal

    async def _handle(
        self, ws: ClientConnection, ctx: AdapterContext, beat: Heartbeat, payload: Payload
    ) -> Signal | None:
        """One payload; a signal when it ends the connection."""
        if payload.op == Op.DISPATCH:
            await self._dispatch(ctx, payload)
        elif payload.op == Op.HEARTBEAT:
            await ws.send(heartbeat(self._session.seq))  # the server asked: beat now
        elif payload.op == Op.HEARTBEAT_ACK:
            beat.ack(self._clock.monotonic())
        elif payload.op == Op.RECONNECT:
            return "reconnect"
        elif payload.op == Op.INVALID_SESSION:
            return "invalid_session_resumable" if payload.d is True else "invalid_session"
        else:
            _LOGGER.debug("Discord gateway op %s ignored", payload.op)
        return None

    async def _dispatch(self, ctx: AdapterContext, payload: Payload) -> None:
        """An op 0 event; its sequence counts as seen only once it has been handled."""
        seq = self._session.seq
        if payload.t != "READY" and seq is not None and payload.s is not None and payload.s <= seq:
            _LOGGER.debug("Discord dispatch %s seen before; skipped", payload.s)
            return
        try:
            await self._on_event(ctx, payload)
        except DiscordPayloadError as err:
            _LOGGER.warning("Discord %s skipped: %s", payload.t, err)
        # After the emit: an event cut off mid-emit is replayed on RESUME, not lost.
        self._session.observe(payload)

    async def _on_event(self, ctx: AdapterContext, payload: Payload) -> None:
        if payload.t == "READY":
            self._session.start(payload)
            await self._save_session(ctx)
            self._became_ready(ctx, "identified")
        elif payload.t == "RESUMED":
            self._became_ready(ctx, "resumed")
        elif payload.t == "MESSAGE_CREATE":
            event = message_event(payload.d, self._session.user_id)
            if event is not None:
                _LOGGER.debug("Discord message %s in %s", event.event_id, event.chat_id)
                await ctx.emit(event)

    def _became_ready(self, ctx: AdapterContext, how: str) -> None:
        self._ready_since = self._clock.monotonic()
        ctx.set_status(AdapterStatus.READY)
        _LOGGER.info("Discord gateway session %s", how)

    async def _save_session(self, ctx: AdapterContext) -> None:
        """Persist the session when it changed, so a restart can RESUME."""
        state = self._session.dumps()
        if state != self._saved:
            await ctx.save(SESSION_KEY, state)
            self._saved = state

    async def _within(self, work: Awaitable[_T], timeout_s: float) -> _T | None:
        """`work`'s result, or None when `timeout_s` passes first on the injected clock."""
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(timer, task, return_exceptions=True)
        return None if task.cancelled() else task.result()

    # REST -------------------------------------------------------------------------------

    async def _create_message(
        self, http: aiohttp.ClientSession, message: OutboundMessage
    ) -> SendResult:
        route, major = ROUTE_CREATE_MESSAGE, message.chat_id
        wait_s = self._buckets.wait_s(route, major, self._clock.monotonic())
        if wait_s > MAX_LOCAL_WAIT_S:
            return SendResult.retry("rate_limited", wait_s)
        if wait_s > 0:
            await self._clock.sleep(wait_s)
        url = f"{self._api_base}/channels/{quote(message.chat_id, safe='')}/messages"
        try:
            async with http.post(url, json=create_message_body(message)) as response:
                status, headers = response.status, response.headers
                body = await _json_body(response)
        except (aiohttp.ClientError, TimeoutError) as err:
            _LOGGER.warning("Discord send failed (%s); it will be retried", type(err).__name__)
            return SendResult.retry("network_error")
        return self._send_result(route, major, status, headers, body)

    def _send_result(
        self, route: str, major: str, status: int, headers: Mapping[str, str], body: Any
    ) -> SendResult:
        now = self._clock.monotonic()
        if status == 429:
            limited = self._buckets.limited(route, major, headers, body, now)
            _LOGGER.info(
                "Discord rate limit (%s) on send; retry after %.2f s",
                limited.scope,
                limited.retry_after_s,
            )
            return SendResult.retry("rate_limited", limited.retry_after_s)
        self._buckets.update(route, major, headers, now)
        if 200 <= status < 300:
            message_id = body.get("id") if isinstance(body, dict) else None
            return SendResult.sent(message_id if isinstance(message_id, str) else None)
        if status >= 500:
            return SendResult.retry(f"http_{status}")
        error = parse_rest_error(status, body)
        _LOGGER.warning(
            "Discord refused a send: HTTP %s, code %s (%s)", status, error.code, error.message
        )
        return SendResult.failed(error.error_code)


async def _next_message(ws: ClientConnection, stream: ZlibStream | None) -> str | bytes:
    """The next whole gateway message; with zlib-stream, binary frames until one completes it."""
    while True:
        frame = await ws.recv()
        if stream is None or isinstance(frame, str):
            return frame
        message = stream.feed(frame)
        if message is not None:
            return message


async def _json_body(response: aiohttp.ClientResponse) -> Any:
    """The response's JSON, or None when it has none."""
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return None


async def _first_of(*work: Awaitable[Signal]) -> Signal:
    """The result of whichever coroutine finishes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _close_code(err: ConnectionClosed) -> int:
    """The code the server closed with; 1006 when the connection dropped without one."""
    return err.rcvd.code if err.rcvd is not None else 1006
