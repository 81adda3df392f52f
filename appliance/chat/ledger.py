"""The chat's durable state in the store: inbox, outbox, seen event keys and pairing (DESIGN §8).

Every change that must not be split by a crash is one transaction: accepting an event writes it
to the inbox and remembers its key as seen; answering writes the replies to the outbox and
removes the answered events from the inbox (and saves pairing state when it changed).
Accepts that arrive together share one transaction (group commit), so a burst of messages costs
one SD card write, not one each.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage
from appliance.chat.pairing import Pairing, PairingStateError
from appliance.store import DurableQueue, Overflow, QueueItem, Store, Transaction

_LOGGER = logging.getLogger(__name__)

INBOX = "chat.inbox"
OUTBOX = "chat.outbox"
INBOX_MAX = 10_000
OUTBOX_MAX = 10_000
SEEN_PREFIX = "chat:seen:"
PAIRING_KEY = "chat:pairing"


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


def encode_reply(platform: str, message: OutboundMessage) -> str:
    """A reply as outbox JSON."""
    return json.dumps({"platform": platform, **asdict(message)}, ensure_ascii=False)


def decode_reply(payload: bytes) -> tuple[str, OutboundMessage]:
    """An outbox item back into its platform and message."""
    data = json.loads(payload)
    platform = data.pop("platform")
    return platform, OutboundMessage(**data)


class ChatLedger:
    """Inbox, outbox, dedupe and pairing state of the chat hub, in one store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.inbox: DurableQueue = store.queue(INBOX, max_items=INBOX_MAX, overflow=Overflow.REJECT)
        self.outbox: DurableQueue = store.queue(
            OUTBOX, max_items=OUTBOX_MAX, overflow=Overflow.REJECT
        )
        self._waiting: list[tuple[InboundEvent, float, asyncio.Future[int | None]]] = []
        self._flush_lock = asyncio.Lock()

    async def accept(self, event: InboundEvent, now: float) -> int | None:
        """Write `event` to the inbox unless its key was seen; its inbox id, or None if seen.

        Returns once the event is committed. Calls made while a commit runs join the next one.
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, now, future))
        async with self._flush_lock:
            if not future.done():
                batch, self._waiting = self._waiting, []
                await self._commit_accepts(batch)
        return await future

    async def _commit_accepts(
        self, batch: list[tuple[InboundEvent, float, asyncio.Future[int | None]]]
    ) -> None:
        entries = [(event, now) for event, now, _ in batch]
        try:
            ids = await self._store.transaction(lambda tx: self._accept_all(tx, entries))
        except BaseException as err:
            failure = err if isinstance(err, Exception) else RuntimeError("accept cancelled")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            raise
        for (_, _, future), item_id in zip(batch, ids, strict=True):
            future.set_result(item_id)

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

    async def pending_events(self, limit: int, now: float) -> list[tuple[int, InboundEvent]]:
        """Up to `limit` inbox events not yet answered, oldest first."""
        return [(i.id, decode_event(i.payload)) for i in await self.inbox.peek(limit, now=now)]

    async def answered(
        self,
        inbox_ids: Sequence[int],
        replies: Sequence[tuple[str, str]],
        now: float,
        pairing: Pairing | None = None,
    ) -> list[int | None]:
        """Queue `replies` (key, payload), drop the answered events, save `pairing`; one commit.

        Returns each reply's outbox id (None where that key was queued already).
        """
        state = None if pairing is None else json.dumps(pairing.to_dict())

        def work(tx: Transaction) -> list[int | None]:
            ids = tx.put(self.outbox, replies, now=now)
            tx.ack(self.inbox, inbox_ids)
            if state is not None:
                tx.set(PAIRING_KEY, state)
            return ids

        return await self._store.transaction(work)

    async def pending_replies(self, limit: int, now: float) -> list[QueueItem]:
        """Up to `limit` replies due for delivery, oldest first."""
        return await self.outbox.peek(limit, now=now)

    async def delivered(self, ids: Sequence[int]) -> None:
        """Forget replies that were sent or can never be."""
        if ids:
            await self.outbox.ack(ids)

    async def retry_later(self, item_id: int, not_before: float) -> None:
        """Keep a reply for another attempt at `not_before`."""
        await self.outbox.nack(item_id, not_before=not_before)

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

    async def depths(self) -> dict[str, Any]:
        """Messages waiting in the inbox and the outbox."""
        return {"inbox": await self.inbox.depth(), "outbox": await self.outbox.depth()}
