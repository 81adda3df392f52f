"""Score the skills on held-out sets: intent accuracy and FAQ accuracy (tests and `make bench`).

The held-out sets in `models/eval/` are never used for training or for choosing thresholds
(those come from leave-one-out on the training examples; see docs/howto/models.md).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.skills.responder import Responder
from appliance.skills.router import UNKNOWN

EVAL_DIR = Path(__file__).resolve().parents[2] / "models" / "eval"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass
class Score:
    """Right answers out of all, and the confusions (expected, got) → count."""

    right: int = 0
    total: int = 0
    confusions: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        """Share of right answers."""
        return self.right / self.total if self.total else 0.0

    def add(self, expected: str, got: str) -> None:
        """Count one answer."""
        self.total += 1
        if expected == got:
            self.right += 1
        else:
            self.confusions[(expected, got)] += 1


async def score_intents(responder: Responder, rows: Sequence[dict[str, Any]]) -> dict[str, Score]:
    """Overall and per-intent scores of `{"text", "intent"}` rows."""
    scores: dict[str, Score] = {"all": Score()}
    for row in rows:
        answer = await responder.answer(row["text"])
        for key in ("all", row["intent"]):
            scores.setdefault(key, Score()).add(row["intent"], answer.intent)
    return scores


async def score_faq(responder: Responder, rows: Sequence[dict[str, Any]]) -> Score:
    """Score of `{"text", "question"}` rows; question None means the FAQ must not answer."""
    assert responder.faq is not None, "score_faq needs a responder with an FAQ"
    answers = {e.answer: e.question for e in responder.faq.entries}
    score = Score()
    for row in rows:
        answer = await responder.answer(row["text"])
        got = answers.get(answer.reply) if answer.intent == "faq" else None
        score.add(str(row["question"]), str(got))
    return score


def out_of_scope_recall(scores: dict[str, Score]) -> float:
    """Share of out-of-scope messages answered `unknown`."""
    return scores[UNKNOWN].accuracy if UNKNOWN in scores else 0.0
