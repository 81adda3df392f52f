"""A fake Discord on loopback: Gateway v10 over websockets and the REST API over aiohttp.web.

It follows the documented protocol (research adapters-provisioning §5.1) closely enough that
the adapter cannot tell: HELLO, IDENTIFY checks (token, intents, properties), READY with a
`resume_gateway_url` back to itself, dispatches with increasing `s` kept for RESUME replay,
HEARTBEAT_ACK (which a test can withhold), RECONNECT, INVALID_SESSION, chosen close codes,
dropped connections; REST `GET /gateway/bot`, `POST /channels/{id}/messages` with rate-limit
headers, `enforce_nonce` dedupe, scripted 429s and JSON errors. Payloads are built from the
recorded examples in `tests/fakes/recorded/discord/`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

RECORDED_DIR = Path(__file__).parent / "recorded" / "discord"
# Read once at import (outside any event loop): tests must not block the loop on file I/O.
_RECORDED: dict[str, Any] = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(RECORDED_DIR.glob("*.json"))
}

TOKEN = "MTE4MDAwMDAwMDAwMDAwMDAwMQ.GfAke0.fake-token-for-tests-only_0123456789"
BOT_ID: str = _RECORDED["ready"]["d"]["user"]["id"]
USER_ID: str = _RECORDED["message_create_dm"]["d"]["author"]["id"]
DM_CHANNEL: str = _RECORDED["message_create_dm"]["d"]["channel_id"]
GUILD_ID: str = _RECORDED["message_create_guild"]["d"]["guild_id"]
GUILD_CHANNEL: str = _RECORDED["message_create_guild"]["d"]["channel_id"]
MESSAGE_CONTENT = 1 << 15
KNOWN_INTENTS = (1 << 26) - 1
NONCE_WINDOW_S = 300.0  # "the same nonce within a few minutes returns the existing message"
MAX_CLIENT_PAYLOAD_BYTES = 4096
SENDS_PER_MINUTE = 120
BUCKET = "b2f8c0e7a41d6593"
SPLIT_BYTES = 256  # compressed messages longer than this go out in two frames, as Discord may


def recorded(name: str) -> Any:
    """A fresh copy of a recorded payload, e.g. `recorded("ready")`."""
    return copy.deepcopy(_RECORDED[name])


@dataclass
class FakeSession:
    """A gateway session: its dispatch log is what RESUME replays."""

    session_id: str
    seq: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    connection: _Connection | None = None


@dataclass
class _Bucket:
    remaining: int
    resets_at: float


@dataclass(eq=False)
class _Connection:
    ws: ServerConnection
    session: FakeSession | None = None
    sent_at: deque[float] = field(default_factory=deque)
    stalled: bool = False  # a dead link: nothing reaches the client, no ACKs either
    deflate: Any = None  # zlib-stream: one compress context for the connection's life
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, text: str | bytes) -> None:
        """Send one gateway message, compressed and maybe split under zlib-stream."""
        async with self.lock:  # a shared zlib context needs its messages in order
            if self.deflate is None:
                await self.ws.send(text)
                return
            data = text.encode() if isinstance(text, str) else text
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
            if len(data) > SPLIT_BYTES:
                await self.ws.send(data[: len(data) // 2])
                data = data[len(data) // 2 :]
            await self.ws.send(data)


class FakeDiscord:
    """Discord's gateway and REST API on 127.0.0.1; use as `async with FakeDiscord() as fake`."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        now: Callable[[], float] = time.monotonic,
        heartbeat_interval_ms: int = 41250,
        bucket_limit: int = 5,
        bucket_reset_s: float = 5.0,
    ) -> None:
        self.token = token
        self._now = now
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.bucket_limit = bucket_limit
        self.bucket_reset_s = bucket_reset_s
        # Switches a test flips.
        self.ack_heartbeats = True
        self.message_content_enabled = True  # the privileged intent, as the developer portal has it
        self.close_next_identify: int | None = None
        self.close_after_ready: int | None = None  # a flapping server: close right after READY
        self.session_start_limit = dict(recorded("gateway_bot")["session_start_limit"])
        self.forbidden_channels: set[str] = set()
        # Create messages but answer nobody until `release()`: a reply "in flight" at a crash.
        self.hold_responses = False
        self._released = asyncio.Event()
        self.missing_channels: set[str] = set()
        # What happened, for assertions.
        self.connections: list[str] = []  # the path and query of each gateway connection
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.heartbeats: list[int | None] = []
        self.client_close_codes: list[int | None] = []
        self.posts: list[dict[str, Any]] = []
        self.user_agents: list[str] = []
        self.requests: list[str] = []  # "GET /api/v10/gateway/bot", …
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.sessions: dict[str, FakeSession] = {}
        self._current: FakeSession | None = None
        self._live: set[_Connection] = set()
        self._scripted: deque[tuple[int, Any, dict[str, str]]] = deque()
        self._buckets: dict[str, _Bucket] = {}
        self._nonces: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._ids = itertools.count(1_310_000_000_000_001_000)
        self._ws_server: Server | None = None
        self._runner: web.AppRunner | None = None
        self.gateway_port = 0
        self.http_port = 0

    async def __aenter__(self) -> FakeDiscord:
        self._ws_server = await serve(self._gateway, "127.0.0.1", 0, ping_interval=None)
        self.gateway_port = self._ws_server.sockets[0].getsockname()[1]
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/v10/gateway/bot", self._gateway_bot)
        app.router.add_get("/api/v10/users/@me", self._users_me)
        app.router.add_get("/api/v10/oauth2/applications/@me", self._application)
        app.router.add_post("/api/v10/channels/{channel_id}/messages", self._create_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def gateway_url(self) -> str:
        """What GET /gateway/bot returns (no query: the client adds `v` and `encoding`)."""
        return f"ws://127.0.0.1:{self.gateway_port}"

    @property
    def resume_url(self) -> str:
        """READY's `resume_gateway_url`: the same server, a path of its own to tell them apart."""
        return f"ws://127.0.0.1:{self.gateway_port}/resume"

    @property
    def api_base(self) -> str:
        """The REST base URL, as the adapter's `api_base`."""
        return f"http://127.0.0.1:{self.http_port}/api/v10"

    @property
    def connected(self) -> int:
        """How many gateway connections are open."""
        return len(self._live)

    # Test controls --------------------------------------------------------------------

    async def dispatch(self, name: str, d: Any) -> int:
        """Send a dispatch on the current session (logged for RESUME); its sequence number."""
        session = self._current
        assert session is not None, "no session: nobody has identified yet"
        return await self._dispatch(session, name, d)

    async def inject_message(
        self,
        content: str,
        *,
        guild: bool = False,
        mention_bot: bool = False,
        author_id: str = USER_ID,
        bot_author: bool = False,
    ) -> dict[str, Any]:
        """A user writes a message: a DM, or in a guild channel (mentioning the bot or not)."""
        d = recorded("message_create_guild" if guild else "message_create_dm")["d"]
        d["id"] = str(next(self._ids))
        d["author"]["id"] = author_id
        if bot_author:
            d["author"]["bot"] = True
        bot = recorded("message_create_guild")["d"]["mentions"]
        d["mentions"] = bot if mention_bot else []
        d["content"] = f"<@{BOT_ID}> {content}" if mention_bot else content
        await self.dispatch("MESSAGE_CREATE", d)
        return d  # type: ignore[no-any-return]

    def release(self) -> None:
        """Stop holding create-message responses; held ones are answered now."""
        self.hold_responses = False
        self._released.set()

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a message as is (compressed under zlib-stream) on every open connection."""
        for connection in list(self._live):
            await connection.send(frame)

    async def corrupt_stream(self) -> None:
        """Send bytes that no zlib context can inflate, ending with the flush marker."""
        for connection in list(self._live):
            await connection.ws.send(b"\x13\x37not zlib at all\x00\x00\xff\xff")

    async def send_op(self, op: int, d: Any = None) -> None:
        """Send a non-dispatch payload (7 RECONNECT, 9 INVALID_SESSION, 1 HEARTBEAT)."""
        await self.send_raw(json.dumps({"op": op, "d": d, "s": None, "t": None}))

    async def close(self, code: int, reason: str = "") -> None:
        """Close every open connection with `code`."""
        for connection in list(self._live):
            await connection.ws.close(code, reason)

    def stall(self) -> None:
        """The open connections go silent (no ACKs, no dispatches) without closing: zombies.

        Dispatches meanwhile are kept in the session's log, so a RESUME replays them.
        """
        for connection in self._live:
            connection.stalled = True

    def drop(self) -> None:
        """Cut every open connection without a close frame (the client sees 1006)."""
        for connection in list(self._live):
            connection.ws.transport.abort()

    def script(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """The next POST /channels/{id}/messages gets this response instead of the normal one."""
        self._scripted.append((status, body, headers or {}))

    # Gateway --------------------------------------------------------------------------

    async def _gateway(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        self.connections.append(path)
        connection = _Connection(ws)
        self._live.add(connection)
        try:
            query = parse_qs(urlsplit(path).query)
            if query.get("v") != ["10"]:
                await ws.close(4012, "Invalid API version")
                return
            if query.get("encoding") != ["json"]:
                await ws.close(4002, "Decode error")
                return
            if query.get("compress") == ["zlib-stream"]:
                connection.deflate = zlib.compressobj()
            await connection.send(
                json.dumps(
                    {**recorded("hello"), "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
                )
            )
            async for frame in ws:
                await self._on_frame(connection, frame)
        except ConnectionClosed:
            pass
        finally:
            self._live.discard(connection)
            self.client_close_codes.append(ws.close_code)
            self._detach(connection, ws.close_code)

    def _detach(self, connection: _Connection, code: int | None) -> None:
        session = connection.session
        if session is None or session.connection is not connection:
            return
        session.connection = None
        if code in (1000, 1001):  # "Closing with 1000 or 1001 invalidates the session"
            self.sessions.pop(session.session_id, None)

    async def _on_frame(self, connection: _Connection, frame: str | bytes) -> None:
        ws = connection.ws
        if len(frame) > MAX_CLIENT_PAYLOAD_BYTES:
            await ws.close(4002, "Payload too large")
            return
        now = asyncio.get_running_loop().time()
        connection.sent_at.append(now)
        while connection.sent_at and connection.sent_at[0] <= now - 60:
            connection.sent_at.popleft()
        if len(connection.sent_at) > SENDS_PER_MINUTE:
            await ws.close(4008, "Rate limited")
            return
        try:
            payload = json.loads(frame)
            op, d = payload["op"], payload.get("d")
        except (ValueError, TypeError, KeyError):
            await ws.close(4002, "Decode error")
            return
        if op == 1:
            self.heartbeats.append(d)
            if self.ack_heartbeats and not connection.stalled:
                await connection.send(json.dumps(recorded("heartbeat_ack")))
        elif op == 2:
            await self._identify(connection, d)
        elif op == 6:
            await self._resume(connection, d)
        elif connection.session is None:
            await ws.close(4003, "Not authenticated")
        elif op not in (3, 4, 8, 31):
            await ws.close(4001, "Unknown opcode")

    async def _identify(self, connection: _Connection, d: Any) -> None:
        ws = connection.ws
        if connection.session is not None:
            await ws.close(4005, "Already authenticated")
            return
        if not _identify_shape_ok(d):
            await ws.close(4002, "Decode error")
            return
        self.identifies.append(d)
        if d["token"] != self.token:
            await ws.close(4004, "Authentication failed")
            return
        if self.close_next_identify is not None:
            code, self.close_next_identify = self.close_next_identify, None
            await ws.close(code, "scripted")
            return
        if d["intents"] & ~KNOWN_INTENTS:
            await ws.close(4013, "Invalid intent(s)")
            return
        if d["intents"] & MESSAGE_CONTENT and not self.message_content_enabled:
            await ws.close(4014, "Disallowed intent(s)")
            return
        self.session_start_limit["remaining"] = max(0, self.session_start_limit["remaining"] - 1)
        session = FakeSession(secrets.token_hex(16), connection=connection)
        self.sessions[session.session_id] = session
        self._current = connection.session = session
        ready = recorded("ready")["d"]
        ready["session_id"] = session.session_id
        ready["resume_gateway_url"] = self.resume_url
        await self._dispatch(session, "READY", ready)
        if self.close_after_ready is not None:
            await ws.close(self.close_after_ready, "scripted")

    async def _resume(self, connection: _Connection, d: Any) -> None:
        ws = connection.ws
        self.resumes.append(d)
        if not isinstance(d, dict) or d.get("token") != self.token:
            await ws.close(4004, "Authentication failed")
            return
        session = self.sessions.get(d.get("session_id", ""))
        if session is None:
            await connection.send(json.dumps(recorded("invalid_session")))
            return
        seq = d.get("seq") or 0
        if not isinstance(seq, int) or seq > session.seq:
            await ws.close(4007, "Invalid seq")
            return
        if session.connection is not None:  # the old socket is a zombie to Discord too
            await session.connection.ws.close(4009, "Session taken over")
        session.connection = connection
        self._current = connection.session = session
        for frame in [f for f in session.log if f["s"] > seq]:
            await connection.send(json.dumps(frame))
        await self._dispatch(session, "RESUMED", recorded("resumed")["d"])

    async def _dispatch(self, session: FakeSession, name: str, d: Any) -> int:
        session.seq += 1
        frame = {"op": 0, "d": d, "s": session.seq, "t": name}
        session.log.append(frame)
        if session.connection is not None and not session.connection.stalled:
            try:
                await session.connection.send(json.dumps(frame))
            except ConnectionClosed:
                pass  # kept in the log; a RESUME replays it
        return session.seq

    # REST -----------------------------------------------------------------------------

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.user_agents.append(request.headers.get("User-Agent", ""))
        self.requests.append(f"{request.method} {request.path}")
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return web.json_response(recorded("error_401"), status=401)
        return await handler(request)  # type: ignore[no-any-return]

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        body = recorded("gateway_bot")
        body["url"] = self.gateway_url
        body["session_start_limit"] = dict(self.session_start_limit)
        return web.json_response(body)

    async def _users_me(self, request: web.Request) -> web.Response:
        return web.json_response(recorded("ready")["d"]["user"])

    async def _application(self, request: web.Request) -> web.Response:
        ready = recorded("ready")["d"]
        return web.json_response(
            {**ready["application"], "name": ready["user"]["username"], "bot_public": False}
        )

    async def _create_message(self, request: web.Request) -> web.Response:
        channel_id = request.match_info["channel_id"]
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"message": "400: Bad Request", "code": 50109}, status=400)
        self.posts.append(body)
        if self._scripted:
            status, reply, headers = self._scripted.popleft()
            return web.json_response(reply, status=status, headers=headers)
        if channel_id in self.missing_channels:
            return web.json_response(recorded("error_404"), status=404)
        if channel_id in self.forbidden_channels:
            return web.json_response(recorded("error_403"), status=403)
        if not _message_body_ok(body):
            return web.json_response({"message": "Invalid Form Body", "code": 50035}, status=400)
        limited = self._take(channel_id)
        if limited is not None:
            return limited
        created = self._created(channel_id, body)
        if self.hold_responses:
            await self._released.wait()
        return web.json_response(created, headers=self._headers(channel_id))

    def _take(self, channel_id: str) -> web.Response | None:
        """Spend one request from the channel's bucket; a 429 when it is empty."""
        now = self._now()
        bucket = self._buckets.get(channel_id)
        if bucket is None or now >= bucket.resets_at:
            bucket = self._buckets[channel_id] = _Bucket(
                self.bucket_limit, now + self.bucket_reset_s
            )
        if bucket.remaining > 0:
            bucket.remaining -= 1
            return None
        retry_after = round(bucket.resets_at - now, 3)
        body = {**recorded("rate_limited"), "retry_after": retry_after}
        headers = {**self._headers(channel_id), "Retry-After": str(max(1, round(retry_after)))}
        return web.json_response(body, status=429, headers={**headers, "X-RateLimit-Scope": "user"})

    def _headers(self, channel_id: str) -> dict[str, str]:
        bucket = self._buckets.get(channel_id)
        if bucket is None:
            return {}
        reset_after = max(0.0, bucket.resets_at - self._now())
        return {
            "X-RateLimit-Limit": str(self.bucket_limit),
            "X-RateLimit-Remaining": str(bucket.remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": BUCKET,
        }

    def _created(self, channel_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The message a create made, or the earlier one for a repeated enforced nonce."""
        nonce = body.get("nonce")
        key = (channel_id, str(nonce))
        if nonce is not None and body.get("enforce_nonce") is True and key in self._nonces:
            made_at, earlier = self._nonces[key]
            if self._now() - made_at < NONCE_WINDOW_S:
                return earlier
        message = recorded("message")
        message.update(
            id=str(next(self._ids)), channel_id=channel_id, content=body["content"], nonce=nonce
        )
        reference = body.get("message_reference")
        if isinstance(reference, dict):
            message["message_reference"] = {"type": 0, "channel_id": channel_id, **reference}
        else:
            message.pop("message_reference")
            message["type"] = 0
        self.messages.setdefault(channel_id, []).append(message)
        if nonce is not None:
            self._nonces[key] = (self._now(), message)
        return message  # type: ignore[no-any-return]


def _identify_shape_ok(d: Any) -> bool:
    """IDENTIFY needs a token, integer intents and os/browser/device properties."""
    if not isinstance(d, dict) or not isinstance(d.get("token"), str):
        return False
    intents, properties = d.get("intents"), d.get("properties")
    if (
        not isinstance(intents, int)
        or isinstance(intents, bool)
        or not isinstance(properties, dict)
    ):
        return False
    return all(isinstance(properties.get(k), str) for k in ("os", "browser", "device"))


def _message_body_ok(body: Any) -> bool:
    """Content of 1-2000 characters and, when present, a nonce of at most 25 characters."""
    if not isinstance(body, dict):
        return False
    content, nonce = body.get("content"), body.get("nonce")
    if not isinstance(content, str) or not 0 < len(content) <= 2000:
        return False
    return nonce is None or (isinstance(nonce, str | int) and len(str(nonce)) <= 25)
