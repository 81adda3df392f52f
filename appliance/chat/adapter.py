"""The Adapter protocol, the context an adapter runs with, and the registry of adapter types.

An adapter is one platform: `run(ctx)` connects and listens until cancelled, `send()` delivers
one message. It knows its wire format and nothing else: pairing, dedupe, chunking, rate limits,
queues and retries live once, in the hub (DESIGN §7).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Protocol

from appliance.chat.events import InboundEvent, OutboundMessage, SendResult
from appliance.errors import ApplianceError
from appliance.supervisor import ServiceContext

# Explicit registry: type name → "module:class". Only configured adapters are imported.
ADAPTERS: dict[str, str] = {
    "gateway": "appliance.chat.adapters.gateway:GatewayAdapter",
    "discord": "appliance.chat.adapters.discord:DiscordAdapter",
    "telegram": "appliance.chat.adapters.telegram:TelegramAdapter",
}


class AdapterStatus(StrEnum):
    """Where an adapter's connection is (research/adapters-provisioning.md §4)."""

    CONNECTING = "connecting"
    READY = "ready"
    RESUMING = "resuming"
    DEGRADED = "degraded"
    FAILED = "failed"


class AdapterUnavailableError(ApplianceError):
    """A configured adapter type does not exist or cannot be imported."""

    code = "adapter_unavailable"


class KeyValueStore(Protocol):
    """The persistent key-value store adapters keep cursors and session ids in."""

    async def get(self, key: str) -> str | None:
        """The value, or None."""
        ...

    async def set(self, key: str, value: str) -> None:
        """Store a value."""
        ...


class AdapterContext:
    """What a running adapter may use: emit events, its own key-value space, status."""

    def __init__(
        self,
        platform: str,
        service: ServiceContext,
        *,
        emit: Callable[[InboundEvent], Awaitable[None]],
        status: Callable[[str, AdapterStatus, str], None],
        kv: KeyValueStore,
    ) -> None:
        self.platform = platform
        self.logger = logging.getLogger(f"appliance.chat.{platform}")
        self._service = service
        self._emit = emit
        self._status = status
        self._kv = kv

    async def emit(self, event: InboundEvent) -> None:
        """Hand an inbound message to the hub; returns once it is durably accepted."""
        await self._emit(event)

    def set_status(self, status: AdapterStatus, detail: str = "") -> None:
        """Report the connection state; READY also marks the service ready."""
        if status is AdapterStatus.READY:
            self._service.ready()
        self._status(self.platform, status, detail)

    async def load(self, key: str) -> str | None:
        """A value this adapter stored earlier (cursor, session id, sequence number)."""
        return await self._kv.get(f"chat:{self.platform}:{key}")

    async def save(self, key: str, value: str) -> None:
        """Store a value under this adapter's own prefix."""
        await self._kv.set(f"chat:{self.platform}:{key}", value)


class Adapter(Protocol):
    """One chat platform."""

    platform: str
    max_text_chars: int
    trusted: bool  # its users are authenticated by the adapter itself (the local gateway)
    # Its chats live only as long as a connection (the local gateway): a reply cannot outlive
    # the process, so the hub answers such events in memory, without the durable queues.
    connection_bound: bool

    async def run(self, ctx: AdapterContext) -> None:
        """Connect and listen until cancelled; report status through `ctx`."""
        ...

    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver one message."""
        ...


def adapter_class(kind: str) -> Any:
    """Import the adapter class registered for `kind`."""
    target = ADAPTERS.get(kind)
    if target is None:
        raise AdapterUnavailableError(
            f"No chat adapter of type {kind!r}; known: {', '.join(sorted(ADAPTERS))}"
        )
    module_name, class_name = target.split(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except ImportError as err:
        raise AdapterUnavailableError(f"The {kind} adapter cannot be imported: {err}") from err
