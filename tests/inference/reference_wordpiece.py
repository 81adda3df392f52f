"""An independent BERT-uncased tokenizer written from the original algorithm, for comparison.

Follows google-research/bert `tokenization.py` as Hugging Face ported it: clean text, CJK
spacing, lower case, strip accents (NFD minus Mn), split on punctuation, then greedy
longest-match-first WordPiece.
"""

from __future__ import annotations

import json
import unicodedata


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # Hugging Face's BertTokenizer, which the model was trained with, drops every "C*"
    # category (also private-use and unassigned); google-research/bert drops only Cc and Cf.
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    ranges = [
        (0x4E00, 0x9FFF),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
        (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F),
        # BERT lists 0x2B820; the Rust `tokenizers` library starts this block at 0x2B920, so
        # U+2B820..U+2B91F are not spaced there. Mirror the library: it is what the device runs.
        (0x2B920, 0x2CEAF),
        (0xF900, 0xFAFF),
        (0x2F800, 0x2FA1F),
    ]
    return any(lo <= cp <= hi for lo, hi in ranges)


def _clean(text: str) -> str:
    out = []
    for ch in text:
        if ord(ch) in (0, 0xFFFD) or _is_control(ch):
            continue
        out.append(" " if _is_whitespace(ch) else ch)
    return "".join(out)


def _basic_tokens(text: str) -> list[str]:
    text = "".join(f" {ch} " if _is_cjk(ord(ch)) else ch for ch in _clean(text))
    tokens = []
    for word in text.split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(ch for ch in word if unicodedata.category(ch) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    tokens.append(current)
                tokens.append(ch)
                current = ""
            else:
                current += ch
        if current:
            tokens.append(current)
    return tokens


class ReferenceWordPiece:
    """BERT uncased tokenization from a vocabulary, no libraries."""

    def __init__(self, tokenizer_json: str) -> None:
        self.vocab: dict[str, int] = json.loads(tokenizer_json)["model"]["vocab"]

    def _pieces(self, word: str) -> list[str]:
        if len(word) > 100:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = piece
                    break
                end -= 1
            if found is None:
                return ["[UNK]"]
            pieces.append(found)
            start = end
        return pieces

    def ids(self, text: str, max_tokens: int) -> list[int]:
        pieces = [p for w in _basic_tokens(text) for p in self._pieces(w)]
        tokens = ["[CLS]", *pieces[: max_tokens - 2], "[SEP]"]
        return [self.vocab[t] for t in tokens]
