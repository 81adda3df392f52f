"""Intent routing on sentence embeddings: nearest labelled examples, a threshold, `unknown`.

Pure numpy: vectors in, (intent, confidence) out. Embedding the texts is the engine's job.
Each intent is scored by the mean cosine of its `k` most similar examples, which copes with
intents whose examples form several clusters better than one centroid per intent does.
Examples labelled `unknown` are real competitors: a message closest to them is out of scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

UNKNOWN = "unknown"

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Route:
    """The router's decision for one message."""

    intent: str
    confidence: float
    runner_up: str


def normalize(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero)."""
    array = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    result: Vectors = (array / np.where(norms == 0, 1.0, norms)).astype(np.float32)
    return result


class IntentRouter:
    """Scores a message against every intent's examples and picks the best above a threshold."""

    def __init__(
        self, examples: Mapping[str, Vectors], *, threshold: float, margin: float = 0.0, k: int = 3
    ) -> None:
        if not examples:
            raise ValueError("the router needs at least one intent with examples")
        self.intents = sorted(examples)
        self._examples = [normalize(examples[name]) for name in self.intents]
        self.threshold = threshold
        self.margin = margin
        self.k = k

    def scores(self, vector: npt.ArrayLike) -> dict[str, float]:
        """Each intent's score: mean cosine of its k nearest examples."""
        query = normalize(vector)[0]
        return {
            name: _top_k_mean(ex @ query, self.k)
            for name, ex in zip(self.intents, self._examples, strict=True)
        }

    def route(self, vector: npt.ArrayLike) -> Route:
        """The best intent, or `unknown` when it is weak, ambiguous or closest to `unknown`."""
        ranked = sorted(self.scores(vector).items(), key=lambda item: item[1], reverse=True)
        (best, score), (second, second_score) = (
            ranked[0],
            (ranked[1] if len(ranked) > 1 else ("", -1.0)),
        )
        weak = score < self.threshold or score - second_score < self.margin
        return Route(UNKNOWN if weak else best, round(float(score), 4), second)


def _top_k_mean(similarities: Vectors, k: int) -> float:
    k = min(k, len(similarities))
    return float(np.mean(np.partition(similarities, -k)[-k:]))
