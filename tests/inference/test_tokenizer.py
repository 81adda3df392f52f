from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.tokenizer import Tokenizer, TokenizerError
from tests.inference.reference_wordpiece import ReferenceWordPiece

TOKENIZER_JSON = (Path(__file__).parents[2] / "models" / "minilm" / "tokenizer.json").read_text(
    encoding="utf-8"
)
MAX = 128


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(TOKENIZER_JSON, max_tokens=MAX)


@pytest.fixture(scope="module")
def reference() -> ReferenceWordPiece:
    return ReferenceWordPiece(TOKENIZER_JSON)


TRICKY = [
    "Café déjà vu, naïve façade!",
    "What's the CPU temp?!?",
    "ÉCOLE Ångström Øre \u2014 \u201cquotes\u201d and \u2018single\u2019",
    "xyzzyqwv frobnicate supercalifragilisticexpialidocious",
    "emoji 🤖🔥 and symbols ©®™ ≠ ≤",
    "tabs\tand\nnewlines\r\n  spaces",
    "中文字符 mixed with English",
    "control\x00chars\x07here\u200b",
    "hyphen-ated e-mail user@example.com http://x.y/z?a=1&b=2",
    "1234567890 3.14159 -42 1e10",
    "",
    "word " * 300,
    "[CLS] [SEP] [PAD] [MASK] [UNK] user text cannot spell special tokens",
    "decomposed e\u0301 a\u0300 o\u0308 n\u0303 and zero\u200dwidth\u200cjoiners",
    "".join(chr(c) for c in range(0x300, 0x370)),
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_text_matches_the_reference_algorithm(
    tokenizer: Tokenizer, reference: ReferenceWordPiece, text: str
) -> None:
    batch = tokenizer.encode([text])
    ids = batch.ids[0][batch.mask[0] == 1].tolist()
    assert ids == reference.ids(text, MAX)


def test_known_pieces(tokenizer: Tokenizer) -> None:
    assert tokenizer.tokens("Café déjà vu!") == ["[CLS]", "cafe", "de", "##ja", "vu", "!", "[SEP]"]
    assert "[UNK]" in tokenizer.tokens("🤖")


def test_long_input_is_truncated_with_sep_last(tokenizer: Tokenizer) -> None:
    batch = tokenizer.encode(["status " * 500])
    assert batch.ids.shape == (1, MAX)
    assert batch.ids[0, 0] == 101 and batch.ids[0, -1] == 102
    assert batch.mask.sum() == MAX


def test_batch_is_padded_to_the_longest_or_a_fixed_length(tokenizer: Tokenizer) -> None:
    batch = tokenizer.encode(["hi", "how are you today"])
    assert batch.ids.shape == (2, 6)
    assert batch.mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch.ids[0, 3:].tolist() == [0, 0, 0]
    assert tokenizer.encode(["hi"], length=16).ids.shape == (1, 16)


def test_broken_tokenizer_json_is_refused() -> None:
    with pytest.raises(TokenizerError, match="could not be parsed"):
        Tokenizer("{not json", max_tokens=8)


SHARED = Tokenizer(TOKENIZER_JSON, max_tokens=MAX), ReferenceWordPiece(TOKENIZER_JSON)


# The Rust library's Unicode tables are older than Python's. A scan of every assigned code point
# between two letters found 503 of 145,854 that differ, all marks, format characters or
# punctuation added in recent Unicode versions (U+0898, U+2E43, U+11660...). The algorithms
# agree; the databases do not. So: letters, digits and symbols from the whole range, plus the
# punctuation and marks people actually type.
_TYPED = [
    (0x21, 0x30),
    (0x3A, 0x41),
    (0x5B, 0x61),
    (0x7B, 0x7F),
    (0xA1, 0xC0),
    (0x2010, 0x2028),
    (0x3000, 0x3020),
    (0x300, 0x370),
]
_UNSTABLE = ["Cn", "Cs", "Cf", "Mn", "Mc", "Me", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "So"]
_ALPHABET = st.characters(exclude_categories=_UNSTABLE) | st.sampled_from(
    [chr(c) for lo, hi in _TYPED for c in range(lo, hi)]
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(_ALPHABET, max_size=80))
def test_any_text_matches_the_reference_algorithm(text: str) -> None:
    tokenizer, reference = SHARED
    batch = tokenizer.encode([text])
    assert batch.ids[0][batch.mask[0] == 1].tolist() == reference.ids(text, MAX)
