"""The chat hub: inbox → policy → answer → outbox → courier, once for every platform.

Offline first (DESIGN §8): `accept()` returns once the event is committed to the inbox, so an
adapter acknowledges a platform only after that; replies go to the platform's own outbox keyed
by an idempotency key and are delivered by its courier (appliance/chat/courier.py) when the
adapter is ready. A restart or kill -9 loses no accepted message.

The policy that lives once for every platform (DESIGN §7) is applied here to each event that
comes out of the inbox: DM pairing (a stranger gets only a pairing code), allowlists, mention
gating in groups; owners may approve codes from chat. Replies are cut to the platform's maximum
length, one outbox item and idempotency key per chunk. An event the engine cannot answer yet
(it is loading a model) stays in the inbox for the next round; one whose answer fails gets an
apology, so that one bad message cannot stop chat.

The fast path does not poll: the ledger reports each committed event straight to the answer
loop, and committed replies go straight to their courier, in memory; the inbox is also read at
start and every `POLL_S` as a backstop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from appliance.chat.adapter import Adapter, AdapterStatus
from appliance.chat.chunking import chunk
from appliance.chat.courier import Courier, retry_delay_s
from appliance.chat.events import InboundEvent, OutboundMessage
from appliance.chat.ledger import ChatLedger, decode_event, decode_reply, encode_event, encode_reply
from appliance.chat.pairing import CODE_TTL_S, Approval, Pairing
from appliance.chat.policy import (
    Answer as Let,
)
from appliance.chat.policy import (
    Ignore,
    PairingCode,
    PlatformPolicy,
    approval_code,
    decide,
)
from appliance.chat.ratelimit import Limit
from appliance.clock import Clock, wait_for
from appliance.inference.engine import EngineNotReadyError
from appliance.skills.responder import Answer
from appliance.store import Store
from appliance.supervisor import ServiceContext

__all__ = [
    "ChatHub",
    "decode_event",
    "decode_reply",
    "encode_event",
    "encode_reply",
    "retry_delay_s",
]

_LOGGER = logging.getLogger(__name__)

BATCH = 16
SEEN_TTL_S = 7 * 86400
FORGET_EVERY_S = 3600.0
POLL_S = 1.0
# Sends per chat (research adapters-provisioning §5): Discord allows 5 per 5 s per channel,
# Telegram about 1 per second per chat (20 per minute in groups). The local gateway has none.
SEND_LIMITS: dict[str, Limit] = {
    "discord": Limit(rate_per_s=1.0, burst=5),
    "telegram": Limit(rate_per_s=1.0, burst=3),
}
_UNLIMITED = Limit(rate_per_s=1e9, burst=1_000_000)
SORRY = "Sorry, something went wrong while I was answering that. Please try again."
NOT_READY = "I am still starting up; please ask again in a moment."

AnswerFn = Callable[[InboundEvent, bool], Awaitable[Answer]]


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
        policies: Mapping[str, PlatformPolicy] | None = None,
        send_limits: Mapping[str, Limit] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store_fn = store
        self._answer = answer
        self._adapters = dict(adapters)
        self._clock = clock
        self._policies = dict(policies or {})
        self._rng = rng
        limits = SEND_LIMITS if send_limits is None else send_limits
        self._couriers = {
            platform: Courier(adapter, clock, limits.get(platform, _UNLIMITED))
            for platform, adapter in adapters.items()
            if not adapter.connection_bound
        }
        self._status: dict[str, tuple[AdapterStatus, str]] = {}
        self._started = asyncio.Event()
        self._ledger: ChatLedger | None = None
        self._group: asyncio.TaskGroup | None = None
        self._pairing = Pairing()
        self._fresh_events: dict[int, InboundEvent] = {}
        self._inbox_wake = asyncio.Event()
        self._next_inbox_scan = -math.inf

    async def run(self, ctx: ServiceContext) -> None:
        """Open the queues, then answer and deliver until cancelled."""
        ledger = ChatLedger(await self._store_fn(), on_accepted=self._accepted)
        self._pairing = await ledger.load_pairing()
        self._next_inbox_scan = -math.inf
        self._inbox_wake.set()
        self._ledger = ledger
        self._started.set()
        ctx.ready()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._answer_loop(ledger))
                group.create_task(self._forget_loop(ledger))
                for platform, courier in self._couriers.items():
                    group.create_task(courier.run(ledger.outbox(platform)))
        finally:
            self._group = None
            self._started.clear()
            self._ledger = None
            self._fresh_events.clear()

    async def accept(self, event: InboundEvent) -> bool:
        """Accept an inbound event; False when it was seen before (dedupe).

        Events of durable platforms are committed to the inbox before this returns; those of a
        connection-bound adapter are answered in memory (their replies cannot outlive it).
        """
        await self._started.wait()
        assert self._ledger is not None and self._group is not None
        adapter = self._adapters.get(event.platform)
        if adapter is not None and adapter.connection_bound:
            self._group.create_task(self._answer_live(event, adapter))
            return True
        if await self._ledger.accept(event, self._clock.time()) is None:
            _LOGGER.debug("Duplicate event %s ignored", event.key)
            return False
        return True

    def _accepted(self, item_id: int, event: InboundEvent) -> None:
        """The ledger committed an event: answer it next."""
        self._fresh_events[item_id] = event
        self._inbox_wake.set()

    def set_status(self, platform: str, status: AdapterStatus, detail: str = "") -> None:
        """An adapter's connection state; READY lets its replies flow."""
        courier = self._couriers.get(platform)
        if courier is not None:
            courier.set_ready(status is AdapterStatus.READY)
        if self._status.get(platform, (None, ""))[0] is not status:
            _LOGGER.info(
                "Chat adapter %s is %s%s", platform, status, f": {detail}" if detail else ""
            )
        self._status[platform] = (status, detail)

    def status_of(self, platform: str) -> AdapterStatus | None:
        """An adapter's last reported status."""
        return self._status.get(platform, (None, ""))[0]

    def detail_of(self, platform: str) -> str:
        """The detail of an adapter's last reported status."""
        return self._status.get(platform, (None, ""))[1]

    def snapshot(self) -> dict[str, Any]:
        """Each adapter's status, for `status` and fleet health."""
        return {name: {"status": str(s), "detail": d} for name, (s, d) in self._status.items()}

    async def depths(self) -> dict[str, int]:
        """How many messages wait in the inbox and the outboxes."""
        if self._ledger is None:
            return {"inbox": 0, "outbox": 0}
        return await self._ledger.depths(list(self._couriers))

    # Pairing, for `appliance pair` through the control socket.

    async def approve(self, code: str) -> Approval:
        """Let in the sender behind a pairing code; PairingError when it is unknown or expired."""
        await self._started.wait()
        assert self._ledger is not None
        approval = self._pairing.approve(code, self._clock.time())
        await self._ledger.save_pairing(self._pairing)
        _LOGGER.info(
            "Approved a %s sender%s", approval.platform, " as owner" if approval.is_owner else ""
        )
        return approval

    async def revoke(self, platform: str, sender_id: str) -> bool:
        """Withdraw a sender's access; whether they had it."""
        await self._started.wait()
        assert self._ledger is not None
        had = self._pairing.revoke(platform, sender_id)
        await self._ledger.save_pairing(self._pairing)
        return had

    def pairing(self) -> dict[str, Any]:
        """Pending codes, approved senders and owners (for `appliance pair list`)."""
        now = self._clock.time()
        return {
            "pending": [
                {
                    "code": r.code,
                    "platform": r.platform,
                    "expires_in_s": round(r.created_at + CODE_TTL_S - now),
                }
                for r in self._pairing.pending(now)
            ],
            "approved": {p: sorted(ids) for p, ids in self._pairing.approved.items()},
            "owners": dict(self._pairing.owners),
        }

    # Answering.

    async def _answer_loop(self, ledger: ChatLedger) -> None:
        while True:
            await wait_for(self._inbox_wake, self._clock, POLL_S)
            self._inbox_wake.clear()
            while batch := await self._next_events(ledger):
                if not await self._answer_batch(ledger, batch):
                    break  # the engine is not ready: what is left waits for the next round

    async def _answer_batch(
        self, ledger: ChatLedger, batch: list[tuple[int, InboundEvent]]
    ) -> bool:
        """Answer a batch and commit its replies; False when some events had to wait."""
        pairing_before = self._pairing.to_dict()
        # Answered together, so that the engine can batch them.
        results = await asyncio.gather(*(self._replies_to(event) for _, event in batch))
        handled = [
            (item_id, event, messages)
            for (item_id, event), messages in zip(batch, results, strict=True)
            if messages is not None
        ]
        replies = [(event.platform, m) for _, event, messages in handled for m in messages]
        changed = self._pairing.to_dict() != pairing_before
        handled_ids = [item_id for item_id, _, _ in handled]
        ids = await ledger.answered(
            handled_ids, replies, self._clock.time(), self._pairing if changed else None
        )
        for item_id in handled_ids:
            self._fresh_events.pop(item_id, None)  # committed while we answered: not twice
        for outbox_id, (platform, message) in zip(ids, replies, strict=True):
            if outbox_id is not None:
                self._couriers[platform].add(outbox_id, message)
        return len(handled) == len(batch)

    async def _next_events(self, ledger: ChatLedger) -> list[tuple[int, InboundEvent]]:
        """The next events to answer: fresh ones first, plus a read of the inbox when due."""
        found = dict(sorted(self._fresh_events.items())[:BATCH])
        for item_id in found:
            del self._fresh_events[item_id]
        now = self._clock.time()
        if now >= self._next_inbox_scan:
            pending = await ledger.pending_events(BATCH, now)
            self._next_inbox_scan = now if len(pending) == BATCH else now + POLL_S
            for item_id, event in pending:
                found.setdefault(item_id, event)
                self._fresh_events.pop(item_id, None)
        return sorted(found.items())

    async def _answer_live(self, event: InboundEvent, adapter: Adapter) -> None:
        """Answer a connection-bound event and send the reply straight away."""
        try:
            pairing_before = None if adapter.trusted else self._pairing.to_dict()
            messages = await self._replies_to(event)
            if messages is None:
                messages = self._chunks(event, adapter, NOT_READY, "unavailable")
            for message in messages:
                result = await adapter.send(message)
                if not result.ok:
                    _LOGGER.info("Reply on %s not sent: %s", event.platform, result.error_code)
                    break
            changed = pairing_before is not None and self._pairing.to_dict() != pairing_before
            if changed and self._ledger is not None:
                await self._ledger.save_pairing(self._pairing)
        except Exception:
            _LOGGER.exception("Answering an event on %s failed", event.platform)

    async def _replies_to(self, event: InboundEvent) -> list[OutboundMessage] | None:
        """The messages that answer `event`; None when it must wait for the engine."""
        adapter = self._adapters.get(event.platform)
        if adapter is None:
            _LOGGER.warning("Dropping an event from unknown platform %s", event.platform)
            return []
        try:
            return await self._decide_and_answer(event, adapter)
        except EngineNotReadyError:
            return None
        except Exception:
            _LOGGER.exception("Answering %s failed; sending an apology", event.key)
            return self._chunks(event, adapter, SORRY, "error")

    async def _decide_and_answer(
        self, event: InboundEvent, adapter: Adapter
    ) -> list[OutboundMessage]:
        """None, a pairing code, or a chunked answer, as the platform's policy decides."""
        if adapter.trusted:
            answer = await self._answer(event, True)
            return self._chunks(event, adapter, answer.reply, answer.intent)
        decision = decide(
            event,
            **self._policy_of(event.platform),
            pairing=self._pairing,
            now=self._clock.time(),
            rng=self._rng,
        )
        if isinstance(decision, Ignore):
            _LOGGER.debug("No answer to %s: %s", event.key, decision.reason)
            return []
        if isinstance(decision, PairingCode):
            _LOGGER.info("Sent a pairing code to a new %s sender", event.platform)
            return self._chunks(event, adapter, decision.text, "pairing")
        return await self._answer_let_in(event, adapter, decision)

    async def _answer_let_in(
        self, event: InboundEvent, adapter: Adapter, let: Let
    ) -> list[OutboundMessage]:
        code = approval_code(let.text) if let.is_owner else None
        if code is not None:
            return self._chunks(event, adapter, self._approve_from_chat(code), "pairing")
        answer = await self._answer(replace(event, text=let.text), let.is_owner)
        return self._chunks(event, adapter, answer.reply, answer.intent)

    def _approve_from_chat(self, code: str) -> str:
        try:
            approval = self._pairing.approve(code, self._clock.time())
        except ValueError as err:
            return str(err)
        _LOGGER.info("An owner approved a %s sender from chat", approval.platform)
        return f"Approved: {approval.platform} user {approval.sender_id} may now talk to me."

    def _policy_of(self, platform: str) -> dict[str, Any]:
        policy = self._policies.get(platform, PlatformPolicy())
        return {
            "dm_policy": policy.dm_policy,
            "group_policy": policy.group_policy,
            "allow_from": policy.allow_from,
        }

    def _chunks(
        self, event: InboundEvent, adapter: Adapter, text: str, intent: str
    ) -> list[OutboundMessage]:
        """One message per chunk; each chunk has its own stable idempotency key."""
        parts = chunk(text, adapter.max_text_chars) or [text]
        return [
            OutboundMessage(
                event.chat_id,
                part,
                reply_to=event.event_id if index == 0 else None,
                idempotency_key=f"reply:{event.key}" + (f":{index}" if len(parts) > 1 else ""),
                intent=intent,
            )
            for index, part in enumerate(parts)
        ]

    # Housekeeping.

    async def _forget_loop(self, ledger: ChatLedger) -> None:
        """Dedupe keys live a week; drop older ones about once an hour."""
        while True:
            forgotten = await ledger.forget_seen(self._clock.time() - SEEN_TTL_S)
            if forgotten:
                _LOGGER.debug("Forgot %s dedupe keys older than a week", forgotten)
            await self._clock.sleep(FORGET_EVERY_S)
