"""The chat's durable state in the store: inbox, outboxes, seen event keys and pairing (DESIGN §8).

Every change that must not be split by a crash is one transaction: accepting an event writes it
to the inbox and remembers its key as seen; answering writes the replies to the outboxes and
removes the answered events from the inbox (and saves pairing state when it changed).
Accepts that arrive together share one transaction (group commit), so a burst of messages costs
one SD card write, not one each. Each platform has an outbox queue of its own
(`chat.outbox.<platform>`), so that one platform's backlog never stands in another's way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict

from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage
from appliance.chat.pairing import Pairing, PairingStateError
from appliance.store import DurableQueue, Overflow, QueueItem, Store, Transaction

_LOGGER = logging.getLogger(__name__)

INBOX = "chat.inbox"
OUTBOX_PREFIX = "chat.outbox."
INBOX_MAX = 10_000
OUTBOX_MAX = 10_000
SEEN_PREFIX = "chat:seen:"
PAIRING_KEY = "chat:pairing"

Accepted = Callable[[int, InboundEvent], None]
_Waiting = tuple[InboundEvent, float, "asyncio.Future[int | None]"]


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


def encode_reply(message: OutboundMessage) -> str:
    """A reply as outbox JSON."""
    return json.dumps(asdict(message), ensure_ascii=False)


def decode_reply(payload: bytes) -> OutboundMessage:
    """An outbox item back into its message."""
    return OutboundMessage(**json.loads(payload))


class ChatLedger:
    """Inbox, outboxes, dedupe and pairing state of the chat hub, in one store.

    `on_accepted(item_id, event)` is called for each newly accepted event as soon as its commit
    is back, before the callers of `accept` resume and even when they were cancelled meanwhile:
    the hub learns of every committed event exactly when it becomes durable.
    """

    def __init__(self, store: Store, on_accepted: Accepted | None = None) -> None:
        self._store = store
        self._on_accepted = on_accepted
        self.inbox: DurableQueue = store.queue(INBOX, max_items=INBOX_MAX, overflow=Overflow.REJECT)
        self._outboxes: dict[str, DurableQueue] = {}
        self._waiting: list[_Waiting] = []
        self._flush_lock = asyncio.Lock()

    def outbox(self, platform: str) -> PlatformOutbox:
        """One platform's outbox."""
        return PlatformOutbox(self._outbox_queue(platform))

    def _outbox_queue(self, platform: str) -> DurableQueue:
        if platform not in self._outboxes:
            self._outboxes[platform] = self._store.queue(
                OUTBOX_PREFIX + platform, max_items=OUTBOX_MAX, overflow=Overflow.REJECT
            )
        return self._outboxes[platform]

    async def accept(self, event: InboundEvent, now: float) -> int | None:
        """Write `event` to the inbox unless its key was seen; its inbox id, or None if seen.

        Returns once the event is committed. Calls made while a commit runs join the next one.
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, now, future))
        async with self._flush_lock:
            if not future.done():
                batch, self._waiting = self._waiting, []
                entries = [(e, t) for e, t, _ in batch]
                commit = asyncio.ensure_future(
                    self._store.transaction(lambda tx: self._accept_all(tx, entries))
                )
                commit.add_done_callback(lambda done: self._settle(batch, done))
                # The commit finishes even if this caller is cancelled: SQLite is already at it.
                await asyncio.shield(commit)
        return await future

    def _accept_all(
        self, tx: Transaction, entries: Sequence[tuple[InboundEvent, float]]
    ) -> list[int | None]:
        ids: list[int | None] = []
        for event, now in entries:
            seen_key = SEEN_PREFIX + event.key
            if tx.get(seen_key) is not None:
                ids.append(None)
                continue
            [item_id] = tx.put(self.inbox, [(event.key, encode_event(event))], now=now)
            tx.set(seen_key, str(int(now)))
            ids.append(item_id)
        return ids

    def _settle(self, batch: list[_Waiting], commit: asyncio.Future[list[int | None]]) -> None:
        """Tell the hub and every waiting caller how their commit went."""
        if commit.cancelled() or commit.exception() is not None:
            error = None if commit.cancelled() else commit.exception()
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error or RuntimeError("the accept commit was cancelled"))
            return
        for (event, _, future), item_id in zip(batch, commit.result(), strict=True):
            if item_id is not None and self._on_accepted is not None:
                self._on_accepted(item_id, event)
            if not future.done():
                future.set_result(item_id)

    async def pending_events(self, limit: int, now: float) -> list[tuple[int, InboundEvent]]:
        """Up to `limit` inbox events not yet answered, oldest first."""
        return [(i.id, decode_event(i.payload)) for i in await self.inbox.peek(limit, now=now)]

    async def answered(
        self,
        inbox_ids: Sequence[int],
        replies: Sequence[tuple[str, OutboundMessage]],
        now: float,
        pairing: Pairing | None = None,
    ) -> list[int | None]:
        """Queue `replies` (platform, message), drop the answered events, save `pairing`.

        One commit. Returns each reply's outbox id (None where its key was queued already).
        """
        state = None if pairing is None else json.dumps(pairing.to_dict())
        queues = [self._outbox_queue(platform) for platform, _ in replies]

        def work(tx: Transaction) -> list[int | None]:
            ids = [
                tx.put(queue, [(message.idempotency_key, encode_reply(message))], now=now)[0]
                for queue, (_, message) in zip(queues, replies, strict=True)
            ]
            tx.ack(self.inbox, inbox_ids)
            if state is not None:
                tx.set(PAIRING_KEY, state)
            return ids

        return await self._store.transaction(work)

    async def forget_seen(self, before: float) -> int:
        """Drop dedupe keys older than `before`; how many."""
        return await self._store.transaction(lambda tx: tx.expire(SEEN_PREFIX, before))

    async def load_pairing(self) -> Pairing:
        """The saved pairing state; an empty one when there is none or it is unreadable."""
        raw = await self._store.kv.get(PAIRING_KEY)
        if raw is None:
            return Pairing()
        try:
            return Pairing.from_dict(json.loads(raw))
        except (ValueError, PairingStateError) as err:
            await self._store.kv.set(PAIRING_KEY + ".unreadable", raw)
            _LOGGER.error(
                "Pairing state is unreadable (%s); it was kept under %s.unreadable and "
                "pairing starts afresh",
                err,
                PAIRING_KEY,
            )
            return Pairing()

    async def save_pairing(self, pairing: Pairing) -> None:
        """Save pairing state now (an approval from the command line)."""
        await self._store.kv.set(PAIRING_KEY, json.dumps(pairing.to_dict()))

    async def depths(self, platforms: Sequence[str]) -> dict[str, int]:
        """Messages waiting in the inbox and in the outboxes of `platforms`, together."""
        outbox = 0
        for platform in platforms:
            outbox += await self._outbox_queue(platform).depth()
        return {"inbox": await self.inbox.depth(), "outbox": outbox}


class PlatformOutbox:
    """One platform's outbox, as its courier uses it."""

    def __init__(self, queue: DurableQueue) -> None:
        self._queue = queue

    async def due(self, limit: int, now: float) -> list[tuple[QueueItem, OutboundMessage]]:
        """Up to `limit` replies due at `now`, oldest first."""
        items = await self._queue.peek(limit, now=now)
        return [(item, decode_reply(item.payload)) for item in items]

    async def delivered(self, ids: Sequence[int]) -> None:
        """Forget replies that were sent or can never be."""
        if ids:
            await self._queue.ack(ids)

    async def retry_later(self, item_id: int, not_before: float) -> None:
        """Keep a reply for another attempt at `not_before`."""
        await self._queue.nack(item_id, not_before=not_before)
