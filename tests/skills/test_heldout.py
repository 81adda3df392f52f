"""The skills on the real model against the held-out sets (never trained on)."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from appliance.bootstrap import checkout_dir, dev_config, standalone_responder
from appliance.config import ApplianceConfig
from appliance.skills.evaluation import (
    EVAL_DIR,
    out_of_scope_recall,
    read_jsonl,
    score_faq,
    score_intents,
)
from appliance.skills.responder import Responder

CONFIG = dev_config(ApplianceConfig(), checkout_dir())


@pytest.fixture
async def responder() -> AsyncIterator[Responder]:
    async with standalone_responder(CONFIG) as responder:
        yield responder


@pytest.fixture
async def faq_responder() -> AsyncIterator[Responder]:
    async with standalone_responder(CONFIG, faq_path=EVAL_DIR / "faq_sample.md") as responder:
        yield responder


def test_heldout_sets_are_big_enough_and_disjoint_from_training() -> None:
    from appliance.skills.responder import load_intent_examples

    rows = read_jsonl(EVAL_DIR / "intents_heldout.jsonl")
    assert len(rows) >= 150
    training = {t.lower().strip("?!. ") for ts in load_intent_examples().values() for t in ts}
    assert not [r["text"] for r in rows if r["text"].lower().strip("?!. ") in training]


async def test_intent_accuracy_on_the_heldout_set(responder: Responder) -> None:
    rows = await asyncio.to_thread(read_jsonl, EVAL_DIR / "intents_heldout.jsonl")
    scores = await score_intents(responder, rows)
    assert scores["all"].accuracy >= 0.90, scores["all"].confusions
    assert out_of_scope_recall(scores) >= 0.85


async def test_faq_answers_paraphrased_questions(faq_responder: Responder) -> None:
    rows = await asyncio.to_thread(read_jsonl, EVAL_DIR / "faq_heldout.jsonl")
    score = await score_faq(faq_responder, rows)
    assert score.accuracy >= 0.80, score.confusions


async def test_faq_does_not_swallow_the_built_in_intents(faq_responder: Responder) -> None:
    rows = await asyncio.to_thread(read_jsonl, EVAL_DIR / "intents_heldout.jsonl")
    scores = await score_intents(faq_responder, rows)
    assert scores["all"].accuracy >= 0.85, scores["all"].confusions
