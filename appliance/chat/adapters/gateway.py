"""The local WebSocket gateway: chat with the appliance on the LAN, no internet needed.

Bearer-token auth (header or `?token=`; loopback without a token only in dev mode), TLS 1.3
minimum when TLS is on, a ping every 30 s that drops dead peers, limits on frame size,
connections per peer and messages per second with clear errors. The frame format is in
`appliance/chat/gateway_protocol.py` and docs/reference/gateway.md.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import logging
import secrets
import ssl
import time
from collections import Counter
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from appliance.chat.adapter import AdapterContext, AdapterStatus
from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage, SendResult
from appliance.chat.gateway_protocol import (
    FrameError,
    error_frame,
    outgoing,
    parse_client_frame,
    reply_frame,
)
from appliance.chat.ratelimit import TokenBucket
from appliance.config import GatewayAdapterConfig

_LOGGER = logging.getLogger(__name__)

PING_INTERVAL_S = 30.0
MAX_FRAME_BYTES = 64 * 1024


class GatewayAdapter:
    """The local WebSocket gateway adapter."""

    platform = "gateway"
    max_text_chars = 1_000_000
    trusted = True
    connection_bound = True

    def __init__(self, cfg: GatewayAdapterConfig, *, dev: bool = False) -> None:
        self._cfg = cfg
        self._dev = dev
        self._token = cfg.token.get_secret_value() if cfg.token else None
        self._connections: dict[str, ServerConnection] = {}
        self._per_peer: Counter[str] = Counter()
        self._ids = itertools.count(1)
        # Event ids must not repeat across restarts: dedupe remembers them for days.
        self._run_id = secrets.token_hex(4)
        self.port: int | None = None

    async def run(self, ctx: AdapterContext) -> None:
        """Listen until cancelled."""
        tls = await asyncio.to_thread(self._tls_context)
        ctx.set_status(AdapterStatus.CONNECTING)
        async with serve(
            lambda ws: self._serve(ws, ctx),
            self._cfg.host,
            self._cfg.port,
            process_request=self._authorize,
            ssl=tls,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_INTERVAL_S,
            max_size=MAX_FRAME_BYTES,
            # No permessage-deflate: chat frames are small and the LAN is fast, while zlib on
            # every frame costs a Pi's CPU on both ends (and compressed secrets invite CRIME).
            compression=None,
            logger=_LOGGER,
        ) as server:
            self.port = server.sockets[0].getsockname()[1] if server.sockets else None
            ctx.logger.info(
                "Gateway listening on %s://%s:%s", "wss" if tls else "ws", self._cfg.host, self.port
            )
            ctx.set_status(AdapterStatus.READY)
            await asyncio.Event().wait()

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._cfg.tls_cert_file is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self._cfg.tls_cert_file, self._cfg.tls_key_file)
        return context

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a handshake without the token, or from a peer with too many connections."""
        peer = _peer_host(connection)
        if not self._token_ok(request, peer):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "A valid bearer token is required\n")
        if self._per_peer[peer] >= self._cfg.max_connections_per_peer:
            return connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"At most {self._cfg.max_connections_per_peer} connections per peer\n",
            )
        return None

    def _token_ok(self, request: Request, peer: str) -> bool:
        if self._token is None:
            return self._dev and _is_loopback(peer)
        header = request.headers.get("Authorization", "")
        offered = (
            header[7:]
            if header.startswith("Bearer ")
            else (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        )
        return hmac.compare_digest(offered.encode(), self._token.encode())

    async def _serve(self, ws: ServerConnection, ctx: AdapterContext) -> None:
        peer = _peer_host(ws)
        chat_id = f"ws-{self._run_id}-{next(self._ids)}"
        self._connections[chat_id] = ws
        self._per_peer[peer] += 1
        bucket = TokenBucket(self._cfg.max_messages_per_s, self._cfg.max_messages_per_s * 2)
        try:
            async for frame in ws:
                await self._receive(ws, ctx, chat_id, peer, frame, bucket)
        except ConnectionClosed:
            pass
        finally:
            del self._connections[chat_id]
            self._per_peer[peer] -= 1

    async def _receive(
        self,
        ws: ServerConnection,
        ctx: AdapterContext,
        chat_id: str,
        peer: str,
        frame: str | bytes,
        bucket: TokenBucket,
    ) -> None:
        message = parse_client_frame(frame)
        if isinstance(message, FrameError):
            await ws.send(error_frame(message))
            return
        if bucket.take(time.monotonic()) > 0:
            await ws.send(
                error_frame(
                    FrameError(
                        "rate_limited",
                        f"At most {self._cfg.max_messages_per_s} messages per second; "
                        "this one was not answered",
                        message.id,
                    )
                )
            )
            return
        await ctx.emit(
            InboundEvent(
                platform=self.platform,
                event_id=f"{chat_id}/{message.id}",
                chat_id=chat_id,
                chat_kind=ChatKind.DIRECT,
                sender_id=f"{peer}/{chat_id}",
                text=message.text,
                ts=time.time(),
            )
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send a reply to the connection the message came from."""
        ws = self._connections.get(message.chat_id)
        if ws is None:
            return SendResult.failed("peer_gone")
        reply_id = (message.reply_to or "").split("/", 1)[-1]
        try:
            await ws.send(outgoing(reply_frame(reply_id, message.text, message.intent)))
        except ConnectionClosed:
            return SendResult.failed("peer_gone")
        return SendResult.sent()


def _peer_host(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
