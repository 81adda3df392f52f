"""The hub's once-for-every-platform policy: pairing, allowlists, mention gating, chunking,
per-chat rate limits and forgetting old dedupe keys, over a real store."""

import asyncio
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.bootstrap import StandaloneContext
from appliance.chat.adapter import AdapterStatus
from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage, SendResult
from appliance.chat.hub import FORGET_EVERY_S, SEEN_TTL_S, ChatHub
from appliance.chat.pairing import CODE_ALPHABET, PairingError
from appliance.chat.policy import PlatformPolicy
from appliance.chat.ratelimit import Limit
from appliance.skills.responder import Answer
from appliance.store import Store
from tests.fakes.clock import FakeClock

PAIRING = PlatformPolicy()  # the default: strangers get a pairing code
CODE = re.compile(rf"Pairing code: ([{CODE_ALPHABET}]{{8}})")


class RecordingAdapter:
    platform = "fake"
    trusted = False
    connection_bound = False

    def __init__(self, max_text_chars: int = 1000) -> None:
        self.max_text_chars = max_text_chars
        self.sent: list[OutboundMessage] = []

    async def run(self, ctx: object) -> None:
        await asyncio.Event().wait()

    async def send(self, message: OutboundMessage) -> SendResult:
        self.sent.append(message)
        return SendResult.sent(f"m{len(self.sent)}")


class Responder:
    """Answers `reply to <text>`, or `reply` when set; records who asked and as what."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []
        self.reply: str | None = None

    async def __call__(self, event: InboundEvent, is_owner: bool) -> Answer:
        self.asked.append((event.text, is_owner))
        return Answer("greeting", 0.9, self.reply or f"reply to {event.text}", 1.0)


def dm(n: int, sender: str = "alice", text: str | None = None) -> InboundEvent:
    return InboundEvent("fake", f"e{n}", f"dm-{sender}", ChatKind.DIRECT, sender, text or f"hi {n}")


def group(n: int, sender: str, *, mention: bool) -> InboundEvent:
    return InboundEvent(
        "fake", f"g{n}", "room", ChatKind.GROUP, sender, f"question {n}", mentions_bot=mention
    )


@pytest.fixture
def db_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp) / "chat.db"


class Hub:
    """A running hub on a real store, with a fake clock for its timers."""

    def __init__(
        self,
        db_path: Path,
        adapter: RecordingAdapter,
        responder: Responder,
        clock: FakeClock,
        policy: PlatformPolicy = PAIRING,
        limit: Limit | None = None,
    ) -> None:
        self.db_path, self.adapter, self.responder, self.clock = db_path, adapter, responder, clock
        self.policy, self.limit = policy, limit

    async def __aenter__(self) -> ChatHub:
        self.store = await Store.open(self.db_path)

        async def opened() -> Store:
            return self.store

        self.hub = ChatHub(
            store=opened,
            answer=self.responder,
            adapters={"fake": self.adapter},
            clock=self.clock,
            policies={"fake": self.policy},
            send_limits={} if self.limit is None else {"fake": self.limit},
        )
        ctx = StandaloneContext("chat")
        self.task = asyncio.create_task(self.hub.run(ctx))
        await asyncio.wait_for(ctx.is_ready.wait(), 5)
        self.hub.set_status("fake", AdapterStatus.READY)
        return self.hub

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.store.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def quiet(hub: ChatHub) -> None:
    """Until the hub has nothing left to answer or deliver."""
    for _ in range(500):
        if await hub.depths() == {"inbox": 0, "outbox": 0}:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"hub still busy: {await hub.depths()}")


async def test_an_unpaired_dm_gets_only_a_pairing_code_until_approved(
    db_path: Path, clock: FakeClock
) -> None:
    adapter, responder = RecordingAdapter(), Responder()
    async with Hub(db_path, adapter, responder, clock) as hub:
        await hub.accept(dm(1, text="what is your temperature?"))
        await until(lambda: len(adapter.sent) == 1)
        found = CODE.search(adapter.sent[0].text)
        assert found, adapter.sent[0].text
        assert responder.asked == [], "a stranger's text must never reach the responder"
        await hub.accept(dm(2))  # a second message while the code is pending: silence
        await quiet(hub)
        assert len(adapter.sent) == 1

        approval = await hub.approve(found.group(1).lower())
        assert (approval.platform, approval.sender_id, approval.is_owner) == ("fake", "alice", True)
        with pytest.raises(PairingError):
            await hub.approve(found.group(1))  # single use
    # The approval survives a restart.
    async with Hub(db_path, adapter, responder, clock) as hub:
        assert hub.pairing()["owners"] == {"fake": "alice"}
        await hub.accept(dm(3))
        await until(lambda: len(adapter.sent) == 2)
        assert adapter.sent[1].text == "reply to hi 3"
        assert responder.asked == [("hi 3", True)]


async def test_an_owner_approves_a_stranger_from_chat(db_path: Path, clock: FakeClock) -> None:
    adapter, responder = RecordingAdapter(), Responder()
    async with Hub(db_path, adapter, responder, clock) as hub:
        await hub.accept(dm(1, "owner"))
        await until(lambda: len(adapter.sent) == 1)
        owner_code = CODE.search(adapter.sent[0].text)
        assert owner_code
        await hub.approve(owner_code.group(1))

        await hub.accept(dm(2, "bob"))
        await until(lambda: len(adapter.sent) == 2)
        bob_code = CODE.search(adapter.sent[1].text)
        assert bob_code
        await hub.accept(dm(3, "bob", text=f"approve {bob_code.group(1)}"))  # not an owner
        await quiet(hub)
        assert len(adapter.sent) == 2, "a pending stranger cannot approve himself"

        await hub.accept(dm(4, "owner", text=f"/approve {bob_code.group(1)}"))
        await until(lambda: len(adapter.sent) == 3)
        assert adapter.sent[2].text.startswith("Approved: fake user bob")
        assert adapter.sent[2].chat_id == "dm-owner"
        await hub.accept(dm(5, "bob"))
        await until(lambda: len(adapter.sent) == 4)
        assert adapter.sent[3].text == "reply to hi 5"
        assert responder.asked == [("hi 5", False)], "bob is approved, not an owner"


async def test_groups_answer_only_mentions_from_allowed_senders(
    db_path: Path, clock: FakeClock
) -> None:
    adapter, responder = RecordingAdapter(), Responder()
    policy = PlatformPolicy(dm_policy="allowlist", allow_from=frozenset({"carol"}))
    async with Hub(db_path, adapter, responder, clock, policy) as hub:
        await hub.accept(group(1, "carol", mention=False))
        await hub.accept(group(2, "dave", mention=True))
        await hub.accept(dm(3, "dave"))  # allowlist DMs: no pairing code either
        await hub.accept(group(4, "carol", mention=True))
        await until(lambda: len(adapter.sent) == 1)
        await quiet(hub)
        assert [m.text for m in adapter.sent] == ["reply to question 4"]
        assert adapter.sent[0].reply_to == "g4"


async def test_a_long_reply_is_chunked_with_one_idempotency_key_per_chunk(
    db_path: Path, clock: FakeClock
) -> None:
    adapter, responder = RecordingAdapter(max_text_chars=20), Responder()
    responder.reply = "First sentence here. Second sentence here. Third one."
    async with Hub(db_path, adapter, responder, clock, PlatformPolicy(dm_policy="open")) as hub:
        await hub.accept(dm(1))
        await until(lambda: len(adapter.sent) == 3)
    assert [m.text for m in adapter.sent] == [
        "First sentence here.",
        "Second sentence",
        "here. Third one.",
    ]
    assert [m.idempotency_key for m in adapter.sent] == [f"reply:fake:e1:{i}" for i in range(3)]
    assert [m.reply_to for m in adapter.sent] == ["e1", None, None]
    assert all(len(m.text) <= 20 for m in adapter.sent)


async def test_sends_to_one_chat_wait_for_its_token_bucket_in_order(
    db_path: Path, clock: FakeClock
) -> None:
    adapter, responder = RecordingAdapter(), Responder()
    policy = PlatformPolicy(dm_policy="open")
    async with Hub(db_path, adapter, responder, clock, policy, Limit(1.0, 2)) as hub:
        for n in range(5):
            await hub.accept(dm(n))
        await hub.accept(dm(9, "other"))
        await until(lambda: len(adapter.sent) == 3)
        await asyncio.sleep(0.1)
        assert sorted(m.text for m in adapter.sent) == [
            "reply to hi 0",
            "reply to hi 1",
            "reply to hi 9",
        ]
        for _ in range(40):
            await clock.advance(0.25)
            await asyncio.sleep(0.01)
            if len(adapter.sent) == 6:
                break
        to_alice = [m.text for m in adapter.sent if m.chat_id == "dm-alice"]
        assert to_alice == [f"reply to hi {n}" for n in range(5)], "order must survive the wait"


async def test_dedupe_keys_are_forgotten_after_a_week(db_path: Path, clock: FakeClock) -> None:
    adapter, responder = RecordingAdapter(), Responder()
    async with Hub(db_path, adapter, responder, clock, PlatformPolicy(dm_policy="open")) as hub:
        assert await hub.accept(dm(1))
        assert not await hub.accept(dm(1))
        await clock.advance(SEEN_TTL_S)
        for _ in range(5):  # the hourly clean-up runs: the week-old key goes
            await clock.advance(FORGET_EVERY_S)
            await asyncio.sleep(0.05)
            if await hub.accept(dm(1)):
                break
        else:
            raise AssertionError("the week-old dedupe key was never forgotten")
