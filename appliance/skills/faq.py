"""The operator's FAQ: `## ` headings of a Markdown file are questions, the text below answers.

Parsing and matching are pure; reading the file is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from appliance.errors import ApplianceError
from appliance.skills.router import normalize


class FaqError(ApplianceError, ValueError):
    """An FAQ file has no usable entries."""

    code = "faq_invalid"


@dataclass(frozen=True)
class FaqEntry:
    """One question and its answer, with the line of its heading."""

    question: str
    answer: str
    line: int


def parse_faq(markdown: str, where: str = "<faq>") -> list[FaqEntry]:
    """Entries in file order; headings without an answer are an error naming their line."""
    entries: list[FaqEntry] = []
    question: str | None = None
    start, body = 0, list[str]()
    for lineno, line in enumerate([*markdown.splitlines(), "## "], start=1):
        if not line.startswith("## "):
            if question is not None:
                body.append(line)
            continue
        if question is not None:
            entries.append(_entry(question, body, start, where))
        question, start, body = line[3:].strip(), lineno, []
    if not entries:
        raise FaqError(f"FAQ {where} has no `## question` headings with answers")
    return entries


def _entry(question: str, body: list[str], line: int, where: str) -> FaqEntry:
    # Markdown joins the lines of a paragraph; blank lines separate paragraphs.
    paragraphs = "\n".join(body).strip().split("\n\n")
    answer = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
    if not question or not answer:
        raise FaqError(f"FAQ {where}:{line}: a `## ` heading needs a question and an answer below")
    return FaqEntry(question, answer, line)


class FaqIndex:
    """Finds the entry whose question is most similar to a message, above a threshold."""

    def __init__(
        self, entries: Sequence[FaqEntry], question_vectors: npt.ArrayLike, *, threshold: float
    ) -> None:
        self.entries = list(entries)
        self._vectors = normalize(question_vectors)
        if len(self._vectors) != len(self.entries):
            raise ValueError("one vector per FAQ entry is needed")
        self.threshold = threshold

    def match(self, vector: npt.ArrayLike) -> tuple[FaqEntry | None, float]:
        """The best entry and its similarity; None when below the threshold."""
        similarities = self._vectors @ normalize(vector)[0]
        best = int(np.argmax(similarities))
        score = float(similarities[best])
        return (self.entries[best] if score >= self.threshold else None), round(score, 4)
