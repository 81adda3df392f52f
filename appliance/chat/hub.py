"""The chat hub: inbox → policy → answer → outbox → adapter, once for every platform.

Offline first (DESIGN §8): `accept()` returns once the event is committed to the inbox, so an
adapter acknowledges a platform only after that; replies go to an outbox keyed by an idempotency
key and are delivered when their adapter is ready, retried with backoff and the platform's own
`retry_after`. A restart or kill -9 loses no accepted message.

The policy that lives once for every platform (DESIGN §7) is applied here to each event that
comes out of the inbox: DM pairing (a stranger gets only a pairing code), allowlists, mention
gating in groups; owners may approve codes from chat. Replies are cut to the platform's maximum
length, one outbox item and idempotency key per chunk, and sent through a token bucket per chat.

The fast path does not poll: an accepted event goes straight to the answer loop and the
committed replies straight to the delivery loop, in memory; the inbox and outbox are scanned at
start, when an adapter becomes ready, and every `POLL_S` for retries that came due.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from appliance.chat.adapter import Adapter, AdapterStatus
from appliance.chat.chunking import chunk
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
from appliance.chat.ratelimit import Limit, RateLimits
from appliance.clock import Clock
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
RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0
POLL_S = 1.0
# Sends per chat (research adapters-provisioning §5): Discord allows 5 per 5 s per channel,
# Telegram about 1 per second per chat (20 per minute in groups). The local gateway has none.
SEND_LIMITS: dict[str, Limit] = {
    "discord": Limit(rate_per_s=1.0, burst=5),
    "telegram": Limit(rate_per_s=1.0, burst=3),
}
_UNLIMITED = Limit(rate_per_s=1e9, burst=1_000_000)

AnswerFn = Callable[[InboundEvent, bool], Awaitable[Answer]]
_Pending = tuple[str, OutboundMessage, int]  # (platform, message, attempts so far)


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
        self._limits = {
            platform: RateLimits(limits.get(platform, _UNLIMITED)) for platform in adapters
        }
        self._ready: set[str] = set()
        self._status: dict[str, tuple[AdapterStatus, str]] = {}
        self._started = asyncio.Event()
        self._ledger: ChatLedger | None = None
        self._group: asyncio.TaskGroup | None = None
        self._pairing = Pairing()
        # The in-memory fast path and what it must not repeat (see the module docstring).
        self._fresh_events: dict[int, InboundEvent] = {}
        self._fresh_replies: dict[int, _Pending] = {}
        self._scan_inbox = True
        self._scan_outbox = True
        self._inbox_wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._next_forget = 0.0
        self._held: dict[tuple[str, str], float] = {}

    async def run(self, ctx: ServiceContext) -> None:
        """Open the queues, then answer and deliver until cancelled."""
        self._ledger = ChatLedger(await self._store_fn())
        self._pairing = await self._ledger.load_pairing()
        self._scan_inbox = self._scan_outbox = True
        self._inbox_wake.set()
        self._outbox_wake.set()
        self._started.set()
        ctx.ready()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._answer_loop(self._ledger))
                group.create_task(self._deliver_loop(self._ledger))
        finally:
            self._group = None
            self._started.clear()
            self._ledger = None
            self._fresh_events.clear()
            self._fresh_replies.clear()

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
        item_id = await self._ledger.accept(event, self._clock.time())
        if item_id is None:
            _LOGGER.debug("Duplicate event %s ignored", event.key)
            return False
        self._fresh_events[item_id] = event
        self._inbox_wake.set()
        return True

    def set_status(self, platform: str, status: AdapterStatus, detail: str = "") -> None:
        """An adapter's connection state; READY lets its replies flow."""
        if status is AdapterStatus.READY:
            self._ready.add(platform)
            self._scan_outbox = True
            self._outbox_wake.set()
        else:
            self._ready.discard(platform)
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
        """How many messages wait in the inbox and the outbox."""
        if self._ledger is None:
            return {"inbox": 0, "outbox": 0}
        return await self._ledger.depths()

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
            await self._inbox_wake.wait()
            self._inbox_wake.clear()
            while batch := await self._next_events(ledger):
                pairing_before = self._pairing.to_dict()
                # Answered together, so that the engine can batch them.
                answers = await asyncio.gather(*(self._replies_to(e) for _, e in batch))
                replies = [
                    (event.platform, m)
                    for (_, event), ms in zip(batch, answers, strict=True)
                    for m in ms
                ]
                changed = self._pairing.to_dict() != pairing_before
                ids = await ledger.answered(
                    [item_id for item_id, _ in batch],
                    [(m.idempotency_key, encode_reply(p, m)) for p, m in replies],
                    self._clock.time(),
                    self._pairing if changed else None,
                )
                for item_id, (platform, message) in zip(ids, replies, strict=True):
                    if item_id is not None:
                        self._fresh_replies[item_id] = (platform, message, 0)
                self._outbox_wake.set()

    async def _answer_live(self, event: InboundEvent, adapter: Adapter) -> None:
        """Answer a connection-bound event and send the reply straight away."""
        try:
            pairing_before = None if adapter.trusted else self._pairing.to_dict()
            for message in await self._replies_to(event):
                result = await adapter.send(message)
                if not result.ok:
                    _LOGGER.info("Reply on %s not sent: %s", event.platform, result.error_code)
                    break
            changed = pairing_before is not None and self._pairing.to_dict() != pairing_before
            if changed and self._ledger is not None:
                await self._ledger.save_pairing(self._pairing)
        except Exception:
            _LOGGER.exception("Answering an event on %s failed", event.platform)

    async def _next_events(self, ledger: ChatLedger) -> list[tuple[int, InboundEvent]]:
        """The next events to answer: fresh ones first, plus a scan of the inbox when due."""
        found = dict(sorted(self._fresh_events.items())[:BATCH])
        for item_id in found:
            del self._fresh_events[item_id]
        if self._scan_inbox:
            self._scan_inbox = False
            pending = await ledger.pending_events(BATCH, self._clock.time())
            self._scan_inbox = len(pending) == BATCH
            for item_id, event in pending:
                found.setdefault(item_id, event)
                self._fresh_events.pop(item_id, None)
        return sorted(found.items())

    async def _replies_to(self, event: InboundEvent) -> list[OutboundMessage]:
        """The messages that answer `event`: none, a pairing code, or a chunked answer."""
        adapter = self._adapters.get(event.platform)
        if adapter is None:
            _LOGGER.warning("Dropping an event from unknown platform %s", event.platform)
            return []
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

    # Delivering.

    async def _deliver_loop(self, ledger: ChatLedger) -> None:
        while True:
            if not await self._wait(self._outbox_wake, POLL_S):
                self._scan_outbox = True  # the poll: retries that came due, adapters now ready
            self._outbox_wake.clear()
            await self._forget_old_keys(ledger)
            done: list[int] = []
            for item_id, pending in await self._next_replies(ledger):
                if await self._deliver_one(ledger, item_id, *pending):
                    done.append(item_id)
            await ledger.delivered(done)

    async def _next_replies(self, ledger: ChatLedger) -> list[tuple[int, _Pending]]:
        found = dict(self._fresh_replies)
        self._fresh_replies.clear()
        if self._scan_outbox:
            self._scan_outbox = False
            due = await ledger.pending_replies(BATCH * 4, self._clock.time())
            self._scan_outbox = len(due) == BATCH * 4
            for item in due:
                platform, message = decode_reply(item.payload)
                found.setdefault(item.id, (platform, message, item.attempts))
        return sorted(found.items(), key=lambda pair: pair[0])

    async def _deliver_one(
        self,
        ledger: ChatLedger,
        item_id: int,
        platform: str,
        message: OutboundMessage,
        attempts: int,
    ) -> bool:
        """Try one reply; True when it is finished with (sent, or failed for good).

        A chat whose reply must wait (rate limit, retry) is held until then, so that later
        replies and chunks to it cannot overtake the one that waits.
        """
        adapter = self._adapters.get(platform)
        if adapter is None or platform not in self._ready:
            return False  # stays queued; the scan when the adapter is ready picks it up
        chat = (platform, message.chat_id)
        now = self._clock.time()
        if now < self._held.get(chat, now):
            return False  # the scan after the hold picks it up, in order
        self._held.pop(chat, None)
        limits = self._limits[platform]
        wait_s = limits.take(message.chat_id, now)
        if wait_s > 0:
            await self._hold(ledger, item_id, chat, now + wait_s)
            return False
        result = await adapter.send(message)
        limits.honour(message.chat_id, self._clock.time(), result)
        if result.ok or not result.retryable:
            if not result.ok:
                _LOGGER.warning("Reply on %s dropped: %s", platform, result.error_code)
            return True
        delay_s = retry_delay_s(attempts, result.retry_after_s)
        _LOGGER.info(
            "Reply on %s failed (%s); retrying in %.1f s", platform, result.error_code, delay_s
        )
        await self._hold(ledger, item_id, chat, self._clock.time() + delay_s)
        return False

    async def _hold(
        self, ledger: ChatLedger, item_id: int, chat: tuple[str, str], until: float
    ) -> None:
        self._held[chat] = until
        await ledger.retry_later(item_id, until)

    async def _forget_old_keys(self, ledger: ChatLedger) -> None:
        """Dedupe keys live a week; drop older ones about once an hour."""
        now = self._clock.time()
        if now < self._next_forget:
            return
        self._next_forget = now + FORGET_EVERY_S
        forgotten = await ledger.forget_seen(now - SEEN_TTL_S)
        if forgotten:
            _LOGGER.debug("Forgot %s dedupe keys older than a week", forgotten)

    async def _wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Until `event` is set (True) or `timeout_s` passes on the injected clock (False)."""
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout_s))
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, sleeper):
            task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
        return event.is_set()
