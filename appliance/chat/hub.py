"""The chat hub: durable inbox → answer → durable outbox → adapter, once for every platform.

Offline first (DESIGN §8): an inbound event is written to the SQLite inbox before `emit()`
returns, so an adapter acknowledges a platform only after that; replies go to an outbox keyed
by an idempotency key and are delivered when their adapter is ready, retried with backoff and
the platform's own `retry_after`. A restart or kill -9 loses no accepted message. Writes of one
batch share one transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any

from appliance.chat.adapter import Adapter, AdapterStatus
from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage
from appliance.clock import Clock
from appliance.skills.responder import Answer
from appliance.store import DurableQueue, Overflow, Store
from appliance.supervisor import ServiceContext

_LOGGER = logging.getLogger(__name__)

BATCH = 16
INBOX_MAX = 10_000
OUTBOX_MAX = 10_000
SEEN_TTL_S = 7 * 86400
RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0
POLL_S = 1.0

AnswerFn = Callable[[InboundEvent, bool], Awaitable[Answer]]


def encode_event(event: InboundEvent) -> str:
    """An event as inbox JSON (without the raw platform payload)."""
    data = asdict(event)
    data.pop("raw")
    return json.dumps(data, ensure_ascii=False)


def decode_event(payload: bytes) -> InboundEvent:
    """An inbox item back into an event."""
    data = json.loads(payload)
    data["chat_kind"] = ChatKind(data["chat_kind"])
    return InboundEvent(**data)


def retry_delay_s(attempts: int, retry_after_s: float | None) -> float:
    """The platform's own wait when it gave one, else exponential backoff from 1 s to 300 s."""
    if retry_after_s is not None:
        return max(0.0, retry_after_s)
    return float(min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts)))


class ChatHub:
    """Moves messages between adapters and the responder through durable queues; a Service."""

    name = "chat"

    def __init__(
        self,
        *,
        store: Callable[[], Awaitable[Store]],
        answer: AnswerFn,
        adapters: Mapping[str, Adapter],
        clock: Clock,
    ) -> None:
        self._store_fn = store
        self._answer = answer
        self._adapters = dict(adapters)
        self._clock = clock
        self._ready: set[str] = set()
        self._status: dict[str, tuple[AdapterStatus, str]] = {}
        self._inbox_wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._store: Store | None = None

    async def run(self, ctx: ServiceContext) -> None:
        """Open the queues, then answer and deliver until cancelled."""
        self._store = await self._store_fn()
        inbox, outbox = self._queues()
        self._inbox_wake.set()
        self._outbox_wake.set()
        ctx.ready()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._answer_loop(inbox, outbox))
                group.create_task(self._deliver_loop(outbox))
        finally:
            self._store = None

    def _queues(self) -> tuple[DurableQueue, DurableQueue]:
        assert self._store is not None
        return (
            self._store.queue("chat.inbox", max_items=INBOX_MAX, overflow=Overflow.REJECT),
            self._store.queue("chat.outbox", max_items=OUTBOX_MAX, overflow=Overflow.REJECT),
        )

    async def accept(self, event: InboundEvent) -> bool:
        """Durably accept an inbound event; False when it was seen before (dedupe)."""
        if self._store is None:
            self._store = await self._store_fn()
        seen_key = f"chat:seen:{event.key}"
        if await self._store.kv.get(seen_key) is not None:
            _LOGGER.debug("Duplicate event %s ignored", event.key)
            return False
        inbox, _ = self._queues()
        added = await inbox.put(encode_event(event), now=self._clock.time(), key=event.key)
        await self._store.kv.set(seen_key, str(int(self._clock.time())))
        self._inbox_wake.set()
        return added

    def set_status(self, platform: str, status: AdapterStatus, detail: str = "") -> None:
        """An adapter's connection state; READY lets its replies flow."""
        if status is AdapterStatus.READY:
            self._ready.add(platform)
            self._outbox_wake.set()
        else:
            self._ready.discard(platform)
        if self._status.get(platform, (None, ""))[0] is not status:
            _LOGGER.info(
                "Chat adapter %s is %s%s", platform, status, f": {detail}" if detail else ""
            )
        self._status[platform] = (status, detail)

    def snapshot(self) -> dict[str, Any]:
        """Each adapter's status, for `status` and fleet health."""
        return {name: {"status": str(s), "detail": d} for name, (s, d) in self._status.items()}

    async def depths(self) -> dict[str, int]:
        """How many messages wait in the inbox and the outbox."""
        if self._store is None:
            return {"inbox": 0, "outbox": 0}
        inbox, outbox = self._queues()
        return {"inbox": await inbox.depth(), "outbox": await outbox.depth()}

    async def _answer_loop(self, inbox: DurableQueue, outbox: DurableQueue) -> None:
        while True:
            await self._inbox_wake.wait()
            self._inbox_wake.clear()
            while items := await inbox.peek(BATCH, now=self._clock.time()):
                replies = [await self._reply_to(decode_event(item.payload)) for item in items]
                await outbox.put_many([r for r in replies if r is not None], now=self._clock.time())
                await inbox.ack([item.id for item in items])
                self._outbox_wake.set()

    async def _reply_to(self, event: InboundEvent) -> tuple[str, str] | None:
        adapter = self._adapters.get(event.platform)
        if adapter is None:
            _LOGGER.warning("Dropping an event from unknown platform %s", event.platform)
            return None
        answer = await self._answer(event, adapter.trusted)
        key = f"reply:{event.key}"
        message = OutboundMessage(
            event.chat_id,
            answer.reply,
            reply_to=event.event_id,
            idempotency_key=key,
            intent=answer.intent,
        )
        return key, json.dumps({"platform": event.platform, **asdict(message)}, ensure_ascii=False)

    async def _deliver_loop(self, outbox: DurableQueue) -> None:
        while True:
            await self._wait(self._outbox_wake, POLL_S)
            self._outbox_wake.clear()
            for item in await outbox.peek(BATCH * 4, now=self._clock.time()):
                await self._deliver_one(outbox, item.id, item.attempts, json.loads(item.payload))

    async def _deliver_one(
        self, outbox: DurableQueue, item_id: int, attempts: int, data: dict[str, Any]
    ) -> None:
        platform = data.pop("platform")
        adapter = self._adapters.get(platform)
        if adapter is None or platform not in self._ready:
            return  # stays queued until the adapter is ready
        result = await adapter.send(OutboundMessage(**data))
        if result.ok or not result.retryable:
            if not result.ok:
                _LOGGER.warning("Reply on %s dropped: %s", platform, result.error_code)
            await outbox.ack([item_id])
            return
        delay_s = retry_delay_s(attempts, result.retry_after_s)
        _LOGGER.info(
            "Reply on %s failed (%s); retrying in %.1f s", platform, result.error_code, delay_s
        )
        await outbox.nack(item_id, not_before=self._clock.time() + delay_s)

    async def _wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Until `event` is set or `timeout_s` passes on the injected clock."""
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout_s))
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, sleeper):
            task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
