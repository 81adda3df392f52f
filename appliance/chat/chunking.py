"""Split a reply into chunks no longer than a platform's maximum message length (DESIGN §7).

Lengths are Python `str` lengths, i.e. code points, which is how Telegram (4096) and Discord
(2000) count (research adapters-provisioning §5.1, §5.3). A cut prefers, in order: a blank
line, a line break, a sentence end, any whitespace; each only within the second half of the
chunk when one is there, so an early short paragraph does not cost an extra message. With no
whitespace at all, the cut is hard, but never inside a character sequence that renders as one
(combining marks, ZWJ emoji, skin tones, flags, a surrogate pair, CRLF) unless that sequence
alone is longer than the limit. Whitespace at cut points and at both ends of the text is
dropped: platforms trim it anyway and reject blank messages.

Pure: no I/O, no platform knowledge beyond the limit it is given.
"""

from __future__ import annotations

import re
import unicodedata

from appliance.errors import ApplianceError

TELEGRAM_MAX_CHARS = 4096
DISCORD_MAX_CHARS = 2000

# Each pattern marks cut positions: group "cut" ends where the chunk ends.
_BREAKS = (
    re.compile(r"(?P<cut>)\n[^\S\n]*\n"),  # blank line: a paragraph break
    re.compile(r"(?P<cut>)\n"),  # line break
    re.compile(r"(?:[.!?\u2026](?=\s)|[\u3002\uff01\uff1f])(?P<cut>)"),  # sentence end, CJK too
    re.compile(r"(?P<cut>)\s"),  # any whitespace
)
_ZWJ = "\u200d"


class ChunkSizeError(ApplianceError, ValueError):
    """A chunk limit below one character was asked for."""

    code = "chunk_size_invalid"


def chunk(text: str, max_chars: int) -> list[str]:
    """`text` as non-empty chunks of at most `max_chars` code points; [] when it is blank."""
    if max_chars < 1:
        raise ChunkSizeError(f"Cannot split a reply into chunks of {max_chars} characters.")
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > max_chars:
        cut = _cut_position(rest, max_chars)
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        chunks.append(rest)
    return chunks


def _cut_position(text: str, max_chars: int) -> int:
    """Where to end the next chunk of `text`, which starts with a non-space and is too long."""
    window = text[: max_chars + 2]
    for lowest in (max(1, max_chars // 2), 1):
        for pattern in _BREAKS:
            cut = _last_break(pattern, window, lowest, max_chars)
            if cut:
                return cut
    return _hard_cut(text, max_chars)


def _last_break(pattern: re.Pattern[str], window: str, lowest: int, highest: int) -> int:
    """The last cut of `pattern` in `lowest..highest` that splits no character; 0 if none."""
    cuts = [m.start("cut") for m in pattern.finditer(window)]
    eligible = (c for c in reversed(cuts) if lowest <= c <= highest and is_boundary(window, c))
    return next(eligible, 0)


def _hard_cut(text: str, max_chars: int) -> int:
    """The last boundary at or before `max_chars`; `max_chars` when one sequence is longer."""
    eligible = (c for c in range(max_chars, 0, -1) if is_boundary(text, c))
    return next(eligible, max_chars)


def is_boundary(text: str, index: int) -> bool:
    """True when cutting `text` before `index` keeps every rendered character whole."""
    if index <= 0 or index >= len(text):
        return True
    before, after = text[index - 1], text[index]
    if before == "\r" and after == "\n":
        return False
    if _is_high_surrogate(before) and _is_low_surrogate(after):
        return False
    if before == _ZWJ or _extends(after):
        return False
    return not (_is_regional(after) and _regional_run_before(text, index) % 2 == 1)


def _extends(char: str) -> bool:
    """True for a code point that belongs to the character before it (UAX #29 Extend, roughly)."""
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or char == _ZWJ
        or "\ufe00" <= char <= "\ufe0f"  # variation selectors
        or "\U0001f3fb" <= char <= "\U0001f3ff"  # emoji skin-tone modifiers
        or "\U000e0020" <= char <= "\U000e007f"  # emoji tag sequences (subdivision flags)
        or "\U000e0100" <= char <= "\U000e01ef"  # variation selectors supplement
    )


def _is_regional(char: str) -> bool:
    """True for a regional indicator: two of them make one flag."""
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def _regional_run_before(text: str, index: int) -> int:
    """How many regional indicators end just before `index`."""
    count = 0
    while index - count > 0 and _is_regional(text[index - count - 1]):
        count += 1
    return count


def _is_high_surrogate(char: str) -> bool:
    """True for the first half of a UTF-16 surrogate pair left in a `str`."""
    return "\ud800" <= char <= "\udbff"


def _is_low_surrogate(char: str) -> bool:
    """True for the second half of a UTF-16 surrogate pair left in a `str`."""
    return "\udc00" <= char <= "\udfff"
