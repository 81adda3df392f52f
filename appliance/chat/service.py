"""Runs one chat adapter as a supervised service, wired to the hub.

The supervisor restarts a crashed adapter on its own; the hub holds its replies meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from appliance.chat.adapter import Adapter, AdapterContext, AdapterStatus, KeyValueStore
from appliance.chat.events import InboundEvent
from appliance.chat.hub import ChatHub
from appliance.errors import ApplianceError
from appliance.supervisor import ServiceContext


class AdapterStoppedError(ApplianceError):
    """An adapter gave up because its platform refused it; a person must fix the config."""

    code = "adapter_stopped"


class AdapterService:
    """One adapter under the supervisor."""

    def __init__(
        self, adapter: Adapter, hub: ChatHub, kv: Callable[[], Awaitable[KeyValueStore]]
    ) -> None:
        self.name = f"chat:{adapter.platform}"
        self.adapter = adapter
        self._hub = hub
        self._kv = kv

    async def run(self, ctx: ServiceContext) -> None:
        """Run the adapter until cancelled; its replies wait while it is down."""
        context = AdapterContext(
            self.adapter.platform,
            ctx,
            emit=self._emit,
            status=self._hub.set_status,
            kv=await self._kv(),
        )
        try:
            await self.adapter.run(context)
        finally:
            if self._hub.status_of(self.adapter.platform) is not AdapterStatus.FAILED:
                self._hub.set_status(self.adapter.platform, AdapterStatus.DEGRADED, "stopped")
        # An adapter returns only when its platform said not to reconnect (a refused token, a
        # disallowed intent): a crash, so the supervisor backs off and parks it (`degraded`)
        # instead of it hammering the platform, and `appliance status` shows why.
        raise AdapterStoppedError(
            f"The {self.adapter.platform} adapter stopped: "
            f"{self._hub.detail_of(self.adapter.platform) or 'no reason given'}"
        )

    async def _emit(self, event: InboundEvent) -> None:
        await self._hub.accept(event)
