"""Delivers one platform's replies from its durable outbox, in order per chat (DESIGN §7, §8).

Each platform has its own courier and its own outbox queue, so a platform that is slow or away
holds up only its own replies. A reply is sent when its adapter is ready, through a token
bucket per chat and the platform's own `retry_after`, and removed from the outbox once the
platform took it (or refused it for good). A chat whose reply must wait is held until the wait
is over and the outbox has been read again, so that later replies and chunks to that chat can
never overtake the one that waits.

Replies the hub has just committed arrive in memory (`add`); the outbox is read when the
adapter becomes ready, when a hold ends, and every `POLL_S` for retries that came due.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Protocol

from appliance.chat.adapter import Adapter
from appliance.chat.events import OutboundMessage
from appliance.chat.ratelimit import Limit, RateLimits
from appliance.clock import Clock, wait_for
from appliance.store import QueueItem

_LOGGER = logging.getLogger(__name__)

SCAN = 64
POLL_S = 1.0
RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0


def retry_delay_s(attempts: int, retry_after_s: float | None) -> float:
    """The platform's own wait when it gave one, else exponential backoff from 1 s to 300 s."""
    if retry_after_s is not None:
        return max(0.0, retry_after_s)
    return float(min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts)))


class Outbox(Protocol):
    """One platform's durable outbox, as the courier uses it."""

    async def due(self, limit: int, now: float) -> list[tuple[QueueItem, OutboundMessage]]:
        """Up to `limit` replies due at `now`, oldest first."""
        ...

    async def delivered(self, ids: Sequence[int]) -> None:
        """Forget replies that were sent or can never be."""
        ...

    async def retry_later(self, item_id: int, not_before: float) -> None:
        """Keep a reply for another attempt at `not_before`."""
        ...


class Courier:
    """One platform's delivery loop; `run(outbox)` until cancelled."""

    def __init__(self, adapter: Adapter, clock: Clock, limit: Limit) -> None:
        self.platform = adapter.platform
        self._adapter = adapter
        self._clock = clock
        self._limits = RateLimits(limit)
        self._fresh: dict[int, OutboundMessage] = {}
        self._wake = asyncio.Event()
        self._ready = False
        self._next_scan_at = -math.inf
        self._last_scan_at = -math.inf
        self._held: dict[str, float] = {}  # chat id → until when its replies wait

    def add(self, item_id: int, message: OutboundMessage) -> None:
        """A reply the hub has just committed to this platform's outbox."""
        self._fresh[item_id] = message
        self._wake.set()

    def set_ready(self, ready: bool) -> None:
        """Whether the adapter can send now; becoming ready reads the outbox."""
        if ready and not self._ready:
            self._next_scan_at = -math.inf
            self._wake.set()
        self._ready = ready

    async def run(self, outbox: Outbox) -> None:
        """Deliver until cancelled."""
        self._fresh.clear()
        self._next_scan_at = -math.inf
        while True:
            await wait_for(self._wake, self._clock, POLL_S)
            self._wake.clear()
            if not self._ready:
                continue
            done: list[int] = []
            for item_id, message, attempts in await self._next(outbox):
                if await self._deliver(outbox, item_id, message, attempts):
                    done.append(item_id)
                elif not self._ready:
                    break
            await outbox.delivered(done)
            for item_id in done:
                self._fresh.pop(item_id, None)

    async def _next(self, outbox: Outbox) -> list[tuple[int, OutboundMessage, int]]:
        """The fresh replies, plus what the outbox holds when a read is due; oldest first."""
        found = {item_id: (message, 0) for item_id, message in self._fresh.items()}
        self._fresh.clear()
        now = self._clock.time()
        if now >= self._next_scan_at:
            self._last_scan_at = now
            due = await outbox.due(SCAN, now)
            # A full page means more is waiting: read again straight away.
            self._next_scan_at = now if len(due) == SCAN else now + POLL_S
            for item, message in due:
                found[item.id] = (message, item.attempts)
                self._fresh.pop(item.id, None)  # committed while we read: not twice
        return [(item_id, m, a) for item_id, (m, a) in sorted(found.items())]

    async def _deliver(
        self, outbox: Outbox, item_id: int, message: OutboundMessage, attempts: int
    ) -> bool:
        """Try one reply; True when it is finished with (sent, or failed for good)."""
        chat = message.chat_id
        now = self._clock.time()
        until = self._held.get(chat)
        if until is not None:
            if now < until or self._last_scan_at < until:
                if now >= until:  # over, but the waiting reply has not been read back yet
                    self._next_scan_at = now
                    self._wake.set()
                return False  # stays in the outbox; a later read finds it, in order
            del self._held[chat]
        wait_s = self._limits.take(chat, now)
        if wait_s > 0:
            await self._hold(outbox, item_id, chat, now + wait_s)
            return False
        result = await self._adapter.send(message)
        self._limits.honour(chat, self._clock.time(), result)
        if result.ok or not result.retryable:
            if not result.ok:
                _LOGGER.warning("Reply on %s dropped: %s", self.platform, result.error_code)
            return True
        delay_s = retry_delay_s(attempts, result.retry_after_s)
        _LOGGER.info(
            "Reply on %s failed (%s); retrying in %.1f s", self.platform, result.error_code, delay_s
        )
        await self._hold(outbox, item_id, chat, self._clock.time() + delay_s)
        return False

    async def _hold(self, outbox: Outbox, item_id: int, chat: str, until: float) -> None:
        self._held[chat] = until
        await outbox.retry_later(item_id, until)
