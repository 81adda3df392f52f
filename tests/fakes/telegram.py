"""A fake Telegram Bot API on loopback (aiohttp.web), faithful where the adapter depends on it.

Serves `/bot<token>/<method>` for getMe, deleteWebhook, setWebhook, getUpdates and sendMessage,
taking parameters as JSON, form data or a query string, like the real API (research
adapters-provisioning §5.3):

- getUpdates confirms every update below `offset`, returns at most `limit` updates of the
  `allowed_updates` kinds (remembered between calls) and holds the request open for up to
  `timeout` seconds until one arrives. A second getUpdates terminates the first with 409, and
  so does a set webhook, each with the real description.
- sendMessage returns a Message with increasing message ids and records every send; it refuses
  empty text, text over 4096 characters, unknown chats and chats that blocked the bot.
- A wrong token gets 401, an unknown method 404.
- Tests script replies per method (`script`), including bodies that are not JSON, and can take
  the server down (connection refused, or an nginx-style 502) and bring it back on its port.

Payloads come from the recorded fixtures in `tests/fakes/recorded/telegram/`, built from the
documented formats. Nothing here sleeps: a held poll waits on an event with its `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

RECORDED_DIR = Path(__file__).parent / "recorded" / "telegram"
# Read once at import, outside any event loop (blockbuster forbids file I/O on the loop).
RECORDED: dict[str, Any] = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(RECORDED_DIR.glob("*.json"))
}
PROXY_502_PAGE = (RECORDED_DIR / "error_502.html").read_bytes()

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"
MAX_TEXT_CHARS = 4096


def recorded(name: str) -> Any:
    """A deep copy of one recorded payload, by file stem."""
    return copy.deepcopy(RECORDED[name])


class Watch:
    """Wakes tests whenever something they may be waiting for changed; no polling sleeps."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def poke(self) -> None:
        """Something changed."""
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Return once `predicate()` is true; fail after `timeout_s` of real time."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP reply."""

    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def of(cls, name: str) -> Reply:
        """A recorded Bot API response, with the HTTP status the real API would use."""
        data = recorded(name)
        status = 200 if data.get("ok") else int(data["error_code"])
        return cls(status, json.dumps(data).encode())

    @classmethod
    def raw(cls, body: bytes, status: int = 200, content_type: str = "text/html") -> Reply:
        """Any bytes: a malformed response, a proxy's error page."""
        return cls(status, body, content_type)


@dataclass(frozen=True)
class Call:
    """One request the fake answered."""

    method: str
    params: dict[str, Any]
    peer: Any = None  # the client's (host, port): a new port is a new TCP connection


class FakeTelegram:
    """The fake Bot API server; `async with FakeTelegram() as api:` serves on a free port."""

    def __init__(self, token: str = TOKEN, *, watch: Watch | None = None) -> None:
        self.token = token
        self.watch = watch or Watch()
        self.bot: dict[str, Any] = recorded("get_me")["result"]
        self.pending: list[dict[str, Any]] = []  # unconfirmed updates, oldest first
        self.sent: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        self.webhook_url = ""
        self.blocked_chats: set[int] = set()
        self.known_chats: set[int] = set()
        self.down: str | None = None
        # Record sends but answer nobody until `release()`: a reply "in flight" at a crash.
        self.hold_responses = False
        self._released = asyncio.Event()
        self.port = 0
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._update_ids = itertools.count(815_100_000)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._allowed: list[str] | None = None
        self._arrived = asyncio.Event()
        self._poll_generation = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeTelegram:
        await self._serve()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        self.down = "closed"
        self._wake()  # held polls answer at once instead of holding up the shutdown
        await self._stop_serving()

    @property
    def base_url(self) -> str:
        """What goes into `api_base`."""
        return f"http://127.0.0.1:{self.port}"

    def polls(self) -> list[Call]:
        """Every getUpdates call so far."""
        return [call for call in self.calls if call.method == "getUpdates"]

    def push(self, update: dict[str, Any] | str, *, renumber: bool = True) -> dict[str, Any]:
        """Queue an update (a dict or a recorded stem) as Telegram would: fresh update id."""
        stored = recorded(update) if isinstance(update, str) else copy.deepcopy(update)
        message = stored.get("message")
        chat = message.get("chat") if isinstance(message, dict) else None
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        if renumber:
            stored["update_id"] = next(self._update_ids)
            if isinstance(chat_id, int):
                message["message_id"] = self._next_message_id(chat_id)  # type: ignore[index]
        if isinstance(chat_id, int):
            self.known_chats.add(chat_id)
        self.pending.append(stored)
        self._wake()
        return stored

    def script(self, method: str, *replies: Reply) -> None:
        """Answer the next calls of `method` with `replies`, in order, before behaving again."""
        self._scripts[method].extend(replies)

    def release(self) -> None:
        """Stop holding sendMessage responses; held ones are answered now."""
        self.hold_responses = False
        self._released.set()

    async def go_down(self, mode: str = "refused") -> None:
        """Stop answering: "refused" closes the port, "502" answers as a proxy with no upstream."""
        self.down = mode
        self._wake()
        if mode == "refused":
            await self._stop_serving()

    async def come_back(self) -> None:
        """Serve again, on the same port."""
        if self.down == "refused":
            await self._serve()
        self.down = None
        self.watch.poke()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def _stop_serving(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()
        self.watch.poke()

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(5000))
        return next(counter)

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.calls.append(Call(method, params, peer))
        self.watch.poke()
        if self.down is not None:
            return _reply(Reply.raw(PROXY_502_PAGE, 502))
        if request.match_info["token"] != self.token:
            return _reply(Reply.of("error_401"))
        if self._scripts[method]:
            return _reply(self._scripts[method].popleft())
        handler = {
            "getMe": self._get_me,
            "deleteWebhook": self._delete_webhook,
            "setWebhook": self._set_webhook,
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
        }.get(method)
        if handler is None:
            return _reply(Reply.of("error_404"))
        return await handler(params)

    async def _get_me(self, params: dict[str, Any]) -> web.Response:
        return _ok(self.bot)

    async def _delete_webhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook_url = ""
        if params.get("drop_pending_updates") in (True, "true", "True"):
            self.pending.clear()
        return _ok(True)

    async def _set_webhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook_url = str(params.get("url", ""))
        self._wake()  # a held getUpdates is ended by the webhook
        return _ok(True)

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook_url:
            return _reply(Reply.of("error_409_webhook"))
        try:
            offset, limit, timeout_s = _poll_numbers(params)
        except ValueError:
            return _error(400, "Bad Request: wrong parameter value")
        if "allowed_updates" in params:
            self._allowed = _json_list(params["allowed_updates"])
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake()  # a poll still held for this token is terminated (409)
        deadline = time.monotonic() + timeout_s
        while True:
            self._confirm(offset)
            batch = self._deliverable()[:limit]
            if batch or time.monotonic() >= deadline:
                return _ok(batch)
            arrived = self._arrived
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), deadline - time.monotonic())
            if generation != self._poll_generation or self.webhook_url:
                return _reply(Reply.of("error_409_poller"))
            if self.down is not None:
                return _reply(Reply.raw(PROXY_502_PAGE, 502))

    def _confirm(self, offset: int | None) -> None:
        """Forget updates below `offset`; a negative offset keeps only the last -offset."""
        if offset is None:
            return
        if offset < 0:
            del self.pending[: max(0, len(self.pending) + offset)]
            return
        self.pending = [u for u in self.pending if u["update_id"] >= offset]

    def _deliverable(self) -> list[dict[str, Any]]:
        if self._allowed:  # an empty list means "all but a few kinds", as the API says
            self.pending = [u for u in self.pending if _kind(u) in self._allowed]
        return self.pending

    async def _send_message(self, params: dict[str, Any]) -> web.Response:
        chat_id, text = params.get("chat_id"), params.get("text")
        if chat_id is None:
            return _error(400, "Bad Request: chat_id is empty")
        if not isinstance(text, str) or not text.strip():
            return _reply(Reply.of("error_400_empty"))
        if len(text) > MAX_TEXT_CHARS:
            return _reply(Reply.of("error_400_too_long"))
        try:
            chat = int(chat_id)
        except (TypeError, ValueError):
            return _reply(Reply.of("error_400_chat_not_found"))
        if chat not in self.known_chats:
            return _reply(Reply.of("error_400_chat_not_found"))
        if chat in self.blocked_chats:
            return _reply(Reply.of("error_403_blocked"))
        self.sent.append(params)
        self.watch.poke()
        if self.hold_responses:
            await self._released.wait()
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat),
            "from": self.bot,
            "chat": {"id": chat, "type": "private" if chat > 0 else "supergroup"},
            "date": int(time.time()),
            "text": text,
        }
        reply = _reply_target(params)
        if reply is not None:
            message["reply_to_message"] = {"message_id": reply, "chat": message["chat"]}
        return _ok(message)


async def _params(request: web.Request) -> dict[str, Any]:
    """Parameters from the query string, a JSON body or form data, as the Bot API takes them."""
    params: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            with contextlib.suppress(ValueError):
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
        else:
            params.update(await request.post())
    return params


def _poll_numbers(params: dict[str, Any]) -> tuple[int | None, int, float]:
    offset = params.get("offset")
    limit = int(params.get("limit", 100))
    timeout_s = float(params.get("timeout", 0))
    return (None if offset is None else int(offset)), max(1, min(100, limit)), max(0.0, timeout_s)


def _json_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value]


def _kind(update: dict[str, Any]) -> str:
    return next((key for key in update if key != "update_id"), "")


def _reply_target(params: dict[str, Any]) -> int | None:
    reply = params.get("reply_parameters")
    if isinstance(reply, str):
        reply = json.loads(reply)
    if isinstance(reply, dict) and "message_id" in reply:
        return int(reply["message_id"])
    legacy = params.get("reply_to_message_id")
    return None if legacy is None else int(legacy)


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": status, "description": description}, status=status
    )


def _reply(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
