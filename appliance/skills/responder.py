"""Message in, answer out: embed, route to an intent (or the FAQ), run its skill, time it.

The one place that knows every skill. It owns no I/O of its own: embedding, facts, alerts and
actions come in through small interfaces, so tests and the `ask` command build it from fakes
or from a model loaded in-process.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from appliance.alerts import AlertLog
from appliance.inference.quantize import Floats
from appliance.skills import replies
from appliance.skills.facts import read_device_facts, read_interfaces
from appliance.skills.faq import FaqEntry, FaqIndex
from appliance.skills.router import UNKNOWN, IntentRouter, Route

INTENTS_PATH = Path(__file__).with_name("intents.toml")

Embed = Callable[[Sequence[str]], Awaitable[Floats]]


@dataclass(frozen=True)
class Answer:
    """What `ask --json` prints and chat adapters send."""

    intent: str
    confidence: float
    reply: str
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


class Actions(Protocol):
    """What skills may ask the appliance to do."""

    async def identify(self, duration_s: float) -> str:
        """Blink the identify pattern; a sentence saying what happened."""
        ...

    async def restart(self, service: str) -> str:
        """Restart a service; a sentence saying what happened."""
        ...


@dataclass(frozen=True)
class Thresholds:
    """Confidence limits (cosine similarities)."""

    intent: float = 0.35
    intent_margin: float = 0.0
    faq: float = 0.35


def load_intent_examples(path: Path = INTENTS_PATH) -> dict[str, list[str]]:
    """The hand-written training examples per intent."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {intent: list(table["examples"]) for intent, table in data.items()}


async def build_router(
    examples: Mapping[str, Sequence[str]], embed: Embed, thresholds: Thresholds
) -> IntentRouter:
    """Embed every example once and build the router."""
    names = sorted(examples)
    texts = [text for name in names for text in examples[name]]
    vectors = await embed(texts)
    by_intent, start = {}, 0
    for name in names:
        by_intent[name] = vectors[start : start + len(examples[name])]
        start += len(examples[name])
    return IntentRouter(by_intent, threshold=thresholds.intent, margin=thresholds.intent_margin)


async def build_faq(entries: Sequence[FaqEntry], embed: Embed, thresholds: Thresholds) -> FaqIndex:
    """Embed every FAQ entry once and build the index.

    Question and answer are embedded together: paraphrases often use the answer's words
    ("refund", "voucher") rather than the question's.
    """
    vectors = await embed([f"{e.question} {e.answer}" for e in entries])
    return FaqIndex(entries, vectors, threshold=thresholds.faq)


@dataclass
class Responder:
    """Answers one message at a time; safe to share between adapters."""

    embed: Embed
    router: IntentRouter
    faq: FaqIndex | None
    device_name: str
    data_dir: Path
    state: Callable[[], str]
    model_info: Callable[[], Mapping[str, Any]]
    alerts: AlertLog
    actions: Actions
    restart_allowlist: Sequence[str] = ()
    now: Callable[[], float] = time.time

    async def answer(self, text: str, *, is_owner: bool = False) -> Answer:
        """The reply to one message, with the intent, confidence and time taken."""
        started = time.perf_counter()
        vector = (await self.embed([text]))[0]
        intent, confidence, faq_entry = self._classify(vector)
        reply = await self._reply(intent, text, faq_entry, is_owner)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        return Answer(intent, confidence, reply, latency_ms)

    def _classify(self, vector: np.ndarray) -> tuple[str, float, FaqEntry | None]:
        route: Route = self.router.route(vector)
        if self.faq is not None:
            entry, score = self.faq.match(vector)
            if entry is not None and (route.intent == UNKNOWN or score > route.confidence):
                return "faq", score, entry
        return route.intent, route.confidence, None

    async def _reply(
        self, intent: str, text: str, faq_entry: FaqEntry | None, is_owner: bool
    ) -> str:
        if intent == "faq" and faq_entry is not None:
            return faq_entry.answer
        if intent == "restart_service":
            return await self._restart(text, is_owner)
        handler = self._handlers().get(intent)
        return await handler() if handler else replies.unknown()

    def _handlers(self) -> dict[str, Callable[[], Awaitable[str]]]:
        return {
            "greeting": self._const(replies.greeting(self.device_name)),
            "help": self._const(replies.HELP),
            "thanks": self._const(replies.thanks()),
            "device_status": self._device_status,
            "network_status": self._network_status,
            "model_info": self._model_info,
            "recent_alerts": self._recent_alerts,
            "identify": self._identify,
        }

    @staticmethod
    def _const(text: str) -> Callable[[], Awaitable[str]]:
        async def reply() -> str:
            return text

        return reply

    async def _device_status(self) -> str:
        facts = await asyncio.to_thread(read_device_facts, self.data_dir)
        return replies.device_status(self.device_name, self.state(), facts)

    async def _network_status(self) -> str:
        return replies.network_status(await asyncio.to_thread(read_interfaces))

    async def _model_info(self) -> str:
        return replies.model_info(self.model_info())

    async def _recent_alerts(self) -> str:
        return replies.recent_alerts(self.alerts.recent(5), self.now())

    async def _identify(self) -> str:
        return await self.actions.identify(15.0)

    async def _restart(self, text: str, is_owner: bool) -> str:
        if not is_owner:
            return "Only the device's owner can restart services."
        words = {w.strip(".,!?'\"").lower() for w in text.split()}
        named = [s for s in self.restart_allowlist if s.lower() in words]
        if len(named) != 1:
            allowed = ", ".join(self.restart_allowlist) or "none are allowed"
            return f"Which service? Name exactly one of: {allowed}."
        return await self.actions.restart(named[0])
