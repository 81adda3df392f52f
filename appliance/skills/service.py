"""The skills service: once the engine is ready, embed the examples and FAQ, then answer.

Starts after the engine (DESIGN §3 start order). Chat adapters and the `ask` command use
`responder` once the service is ready.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.alerts import AlertLog
from appliance.errors import ApplianceError
from appliance.skills.faq import FaqIndex, parse_faq
from appliance.skills.responder import (
    Actions,
    Embed,
    Responder,
    Thresholds,
    build_faq,
    build_router,
    load_intent_examples,
)
from appliance.supervisor import ServiceContext

_LOGGER = logging.getLogger(__name__)


class SkillsNotReadyError(ApplianceError):
    """A message arrived before the skills were built."""

    code = "skills_not_ready"


class SkillsService:
    """Builds the Responder from the engine's embeddings and holds it while running."""

    name = "skills"

    def __init__(
        self,
        *,
        embed: Embed,
        prepare_embed: Embed | None = None,
        faq_path: Path | None,
        thresholds: Thresholds,
        device_name: str,
        data_dir: Path,
        state: Callable[[], str],
        model_info: Callable[[], Mapping[str, Any]],
        alerts: AlertLog,
        actions: Actions,
        restart_allowlist: Sequence[str] = (),
    ) -> None:
        self._embed = embed
        self._prepare_embed = prepare_embed or embed
        self._faq_path = faq_path
        self._thresholds = thresholds
        self._new_responder = functools.partial(
            Responder,
            embed=embed,
            device_name=device_name,
            data_dir=data_dir,
            state=state,
            model_info=model_info,
            alerts=alerts,
            actions=actions,
            restart_allowlist=tuple(restart_allowlist),
        )
        self._responder: Responder | None = None

    @property
    def responder(self) -> Responder:
        """The responder; raises SkillsNotReadyError before the service is ready."""
        if self._responder is None:
            raise SkillsNotReadyError("The skills are still being prepared; try again shortly")
        return self._responder

    async def run(self, ctx: ServiceContext) -> None:
        """Build the responder, then hold it until cancelled."""
        self._responder = await self.build()
        try:
            ctx.ready()
            await asyncio.Event().wait()
        finally:
            self._responder = None

    async def build(self) -> Responder:
        """Embed the training examples and the FAQ questions; the ready Responder."""
        examples = await asyncio.to_thread(load_intent_examples)
        router = await build_router(examples, self._prepare_embed, self._thresholds)
        faq = await self._faq()
        _LOGGER.info(
            "Skills ready: %d intents, %d FAQ entries",
            len(router.intents),
            len(faq.entries) if faq else 0,
        )
        return self._new_responder(router=router, faq=faq)

    async def _faq(self) -> FaqIndex | None:
        if self._faq_path is None:
            return None
        text = await asyncio.to_thread(self._faq_path.read_text, encoding="utf-8")
        entries = parse_faq(text, str(self._faq_path))
        return await build_faq(entries, self._prepare_embed, self._thresholds)
