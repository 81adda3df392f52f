"""Text to token ids with the model's own `tokenizer.json` (Hugging Face `tokenizers`).

BERT uncased WordPiece exactly as the model was trained: lower-casing, accent stripping,
punctuation splitting, `[UNK]` for unknown pieces, `[CLS] … [SEP]`, truncation to the model's
length. Pure apart from parsing the JSON it is given; nothing else from the NLP stacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer as _HfTokenizer

from appliance.errors import ApplianceError

Ids = npt.NDArray[np.int32]


class TokenizerError(ApplianceError, ValueError):
    """A tokenizer.json could not be loaded."""

    code = "tokenizer_invalid"


@dataclass(frozen=True)
class Batch:
    """Token ids and attention mask for a batch of texts, both [n, length] int32."""

    ids: Ids
    mask: Ids


class Tokenizer:
    """A WordPiece tokenizer that truncates to `max_tokens` and pads batches."""

    def __init__(self, tokenizer_json: str, *, max_tokens: int) -> None:
        try:
            self._hf = _HfTokenizer.from_str(tokenizer_json)
        except Exception as err:  # the Rust library raises its own exception type
            raise TokenizerError(f"tokenizer.json could not be parsed: {err}") from err
        self._hf.no_padding()
        self._hf.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self.pad_id = self._hf.token_to_id("[PAD]") or 0

    def encode(self, texts: Sequence[str], *, length: int | None = None) -> Batch:
        """Encode texts, padded to `length` or to the longest text in the batch."""
        encodings = self._hf.encode_batch([_defuse_special_tokens(t) for t in texts])
        width = length or max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(encodings), width), dtype=np.int32)
        for row, encoding in enumerate(encodings):
            n = min(width, len(encoding.ids))
            ids[row, :n] = encoding.ids[:n]
            mask[row, :n] = 1
        return Batch(ids, mask)

    def tokens(self, text: str) -> list[str]:
        """The word pieces of one text, with the special tokens (for tests and debugging)."""
        return list(self._hf.encode(_defuse_special_tokens(text)).tokens)


def _defuse_special_tokens(text: str) -> str:
    """Stop message text from spelling special tokens such as `[SEP]` or `[PAD]`.

    The library matches special tokens inside raw text. `[` is always split off as punctuation
    by BERT's pre-tokenizer, so a space after it changes nothing else.
    """
    return text.replace("[", "[ ")
