import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from appliance.chat.chunking import (
    DISCORD_MAX_CHARS,
    TELEGRAM_MAX_CHARS,
    ChunkSizeError,
    chunk,
    is_boundary,
)


def assert_reassembles(text: str, chunks: list[str]) -> None:
    """Each chunk appears in order in `text`, and only whitespace lies between them."""
    position = 0
    for piece in chunks:
        found = text.find(piece, position)
        assert found >= 0, piece
        assert text[position:found].strip() == ""
        position = found + len(piece)
    assert text[position:].strip() == ""


def test_short_text_is_one_chunk() -> None:
    assert chunk("hello", 10) == ["hello"]
    assert chunk("  hello \n", 10) == ["hello"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t"])
def test_blank_text_gives_no_chunks(text: str) -> None:
    assert chunk(text, 10) == []


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ChunkSizeError) as caught:
        chunk("hello", 0)
    assert caught.value.code == "chunk_size_invalid"


def test_platform_limits() -> None:
    assert (TELEGRAM_MAX_CHARS, DISCORD_MAX_CHARS) == (4096, 2000)
    text = "word " * 1000
    assert all(len(c) <= DISCORD_MAX_CHARS for c in chunk(text, DISCORD_MAX_CHARS))
    assert len(chunk(text, TELEGRAM_MAX_CHARS)) == 2


def test_paragraph_break_wins_over_a_later_line_break() -> None:
    text = "first para line one\nline two\n\nsecond para\nmore text here"
    assert chunk(text, 45) == ["first para line one\nline two", "second para\nmore text here"]


def test_line_break_wins_over_a_later_sentence_end() -> None:
    text = "one two three four\nfive. six seven eight"
    assert chunk(text, 30) == ["one two three four", "five. six seven eight"]


def test_sentence_end_wins_over_a_later_space() -> None:
    text = "Alpha beta gamma. Delta epsilon zeta eta"
    assert chunk(text, 30) == ["Alpha beta gamma.", "Delta epsilon zeta eta"]


def test_space_when_there_is_nothing_better() -> None:
    assert chunk("aaaa bbbb cccc dddd", 10) == ["aaaa bbbb", "cccc dddd"]


def test_cjk_sentence_end_needs_no_space() -> None:
    assert chunk("今日は晴れ。明日は雨です", 8) == ["今日は晴れ。", "明日は雨です"]


def test_an_early_break_does_not_waste_a_message() -> None:
    # The paragraph break sits in the first half, so a later space is used instead.
    text = "Hi.\n\n" + "word " * 20
    chunks = chunk(text, 50)
    assert chunks[0].startswith("Hi.\n\nword")
    assert len(chunks) == 3


def test_early_break_is_still_better_than_a_hard_cut() -> None:
    assert chunk("ab\n" + "x" * 20, 10) == ["ab", "x" * 10, "x" * 10]


def test_hard_cut_without_whitespace() -> None:
    assert chunk("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_hard_cut_keeps_combining_marks_with_their_letter() -> None:
    text = "e\u0301" * 3000
    chunks = chunk(text, DISCORD_MAX_CHARS)
    assert "".join(chunks) == text
    assert all(c.startswith("e") and c.endswith("\u0301") for c in chunks)


@pytest.mark.parametrize(
    "unit",
    [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: ZWJ sequence
        "\U0001f44d\U0001f3fd",  # thumbs up, skin tone
        "\U0001f1e9\U0001f1ea",  # flag: two regional indicators
        "\u2764\ufe0f",  # heart with a variation selector
        "\ud83d\ude00",  # a surrogate pair left in a str
        "e\u0301",  # letter and combining accent
    ],
)
def test_hard_cut_never_splits_a_rendered_character(unit: str) -> None:
    for max_chars in range(len(unit), 30):
        chunks = chunk(unit * 40, max_chars)
        assert all(len(c) <= max_chars for c in chunks)
        assert all(c == unit * (len(c) // len(unit)) for c in chunks)
        assert "".join(chunks) == unit * 40


def test_crlf_is_one_line_break() -> None:
    assert not is_boundary("a\r\nb", 2)
    assert is_boundary("a\r\nb", 1)


def test_a_sequence_longer_than_the_limit_is_cut_anyway() -> None:
    text = "e" + "\u0301" * 30
    assert [len(c) for c in chunk(text, 10)] == [10, 10, 10, 1]


def test_flags_pair_from_the_start_of_a_run() -> None:
    flags = "\U0001f1e9\U0001f1ea\U0001f1eb\U0001f1f7"  # DE FR
    assert not is_boundary(flags, 1)
    assert is_boundary(flags, 2)
    assert not is_boundary(flags, 3)
    assert is_boundary(flags, 0) and is_boundary(flags, 4)


texts = st.text(
    alphabet=st.one_of(
        st.sampled_from([" ", "\n", "\r", ".", "!", "。", "\t", "\u0301", "\u200d"]),
        st.characters(codec="utf-8"),
    ),
    max_size=400,
)


@given(texts, st.integers(min_value=1, max_value=80))
@example("a\n\n\n\nb", 1)
@example("x. \u0301y", 2)
def test_chunks_fit_and_reassemble(text: str, max_chars: int) -> None:
    chunks = chunk(text, max_chars)
    assert all(0 < len(c) <= max_chars for c in chunks)
    assert all(c == c.strip() for c in chunks)
    assert_reassembles(text, chunks)
    assert (chunks == []) == (text.strip() == "")


@given(st.text(alphabet="ab\u0301\u200d\U0001f3fd\U0001f1e9", max_size=200))
def test_cuts_fall_on_boundaries_when_one_is_in_reach(text: str) -> None:
    max_chars = 8
    start = 0
    for piece in chunk(text, max_chars)[:-1]:
        end = start + len(piece)
        reach = range(start + 1, start + max_chars + 1)
        if any(is_boundary(text, c) for c in reach):
            assert is_boundary(text, end)
        start = end


@given(st.text(max_size=300), st.integers(min_value=1, max_value=50))
def test_no_more_chunks_than_needed_twice_over(text: str, max_chars: int) -> None:
    chunks = chunk(text, max_chars)
    assert len(chunks) <= 2 * (len(text) // max_chars) + 1
