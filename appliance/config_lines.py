"""Where each key of a TOML document sits: key path → line number. Pure: text in, dict out.

`tomllib` reports no positions for valid documents, so config errors would otherwise name only
a key. This scanner follows TOML's line structure (tables, arrays of tables, dotted keys,
inline tables, multi-line strings and arrays) well enough to point at the right line; it
never raises, and a key it cannot place falls back to its nearest placed parent.
"""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]

_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_ARRAY_TABLE = re.compile(rf"^\[\[\s*({_DOTTED})\s*\]\]")
_TABLE = re.compile(rf"^\[\s*({_DOTTED})\s*\]")
_KEY_VALUE = re.compile(rf"^({_DOTTED})\s*=\s*(.*)$")
_PART = re.compile(_BARE_OR_QUOTED)


def split_key(dotted: str) -> tuple[str, ...]:
    """Split a dotted TOML key into its parts, unquoting quoted parts."""
    return tuple(_unquote(p) for p in _PART.findall(dotted))


def _unquote(part: str) -> str:
    if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
        return part[1:-1]
    return part


class _Scanner:
    """Line-by-line state: current table, array-of-tables counters, open strings/brackets."""

    def __init__(self) -> None:
        self.lines: dict[KeyPath, int] = {}
        self.table: KeyPath = ()
        self.arrays: dict[tuple[str, ...], int] = {}
        self.open_string: str | None = None
        self.depth = 0

    def feed(self, lineno: int, raw: str) -> None:
        if self.open_string:
            if self.open_string in raw:
                self.open_string = None
            return
        if self.depth > 0:
            self.depth += _bracket_balance(raw)
            return
        line = raw.strip()
        if not line or line.startswith("#"):
            return
        if match := _ARRAY_TABLE.match(line):
            self._array_table(split_key(match[1]), lineno)
        elif match := _TABLE.match(line):
            self.table = self._resolve(split_key(match[1]))
            self.lines.setdefault(self.table, lineno)
        elif match := _KEY_VALUE.match(line):
            self._key_value(split_key(match[1]), match[2], lineno)

    def _array_table(self, names: tuple[str, ...], lineno: int) -> None:
        index = self.arrays.get(names, 0)
        self.arrays[names] = index + 1
        self.table = (*self._resolve(names), index)
        self.lines.setdefault(self.table[:-1], lineno)
        self.lines[self.table] = lineno

    def _resolve(self, names: tuple[str, ...]) -> KeyPath:
        """Insert the current index after every array-of-tables prefix of `names`."""
        path: list[str | int] = []
        for i, name in enumerate(names):
            path.append(name)
            prefix = names[: i + 1]
            if prefix in self.arrays and i < len(names) - 1:
                path.append(self.arrays[prefix] - 1)
        return tuple(path)

    def _key_value(self, names: tuple[str, ...], value: str, lineno: int) -> None:
        key = (*self.table, *names)
        for i in range(len(self.table) + 1, len(key) + 1):
            self.lines.setdefault(key[:i], lineno)
        if value.startswith("{"):
            for inner in re.findall(rf"({_BARE_OR_QUOTED})\s*=", value):
                self.lines.setdefault((*key, _unquote(inner)), lineno)
        for quote in ('"""', "'''"):
            if value.startswith(quote) and value.count(quote) == 1:
                self.open_string = quote
        if value.startswith("["):
            self.depth = _bracket_balance(value)


def _bracket_balance(text: str) -> int:
    """Opening minus closing brackets outside strings and comments."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", text).split("#", 1)[0]
    return text.count("[") - text.count("]")


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path (list indexes as ints) to the 1-based line where it is set."""
    scanner = _Scanner()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        scanner.feed(lineno, raw)
    return scanner.lines


def find_line(lines: dict[KeyPath, int], keys: KeyPath) -> int | None:
    """The line of `keys`, or of its nearest parent that has one; None for the top level."""
    for end in range(len(keys), 0, -1):
        if keys[:end] in lines:
            return lines[keys[:end]]
    return None
