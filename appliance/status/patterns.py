"""The status LED patterns of DESIGN §4 as data, chosen by supervisor state.

Pure: no gpiozero, no asyncio, no clock. Time is passed in as an argument (STYLE rule 5).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from appliance.supervisor import SupervisorState

Color = tuple[float, float, float]

# Morse timing for the error pattern (DESIGN §4 "SOS"); a dot is one unit.
_DOT_S = 0.2
_DASH_S = 0.6
_ELEMENT_GAP_S = 0.2
_LETTER_GAP_S = 0.6
_WORD_GAP_S = 1.4


@dataclass(frozen=True)
class Step:
    """One phase of a pattern: a brightness from 0 to 1 held for `duration_s`."""

    level: float
    duration_s: float


@dataclass(frozen=True)
class Pattern:
    """A named sequence of steps repeated forever; one step of infinite duration is steady."""

    name: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"LED pattern {self.name!r} has no steps")
        for step in self.steps:
            _check_step(self.name, step)
        if math.isinf(self.period_s) and len(self.steps) > 1:
            raise ValueError(f"LED pattern {self.name!r}: only a lone step may last forever")

    @property
    def period_s(self) -> float:
        """How long one repetition lasts; infinite for a single step that lasts forever."""
        return self._step_ends_s[-1]

    @property
    def is_steady(self) -> bool:
        """True when the level never changes."""
        return len({step.level for step in self.steps}) == 1

    @cached_property
    def _step_ends_s(self) -> tuple[float, ...]:
        return tuple(itertools.accumulate(step.duration_s for step in self.steps))


def _check_step(name: str, step: Step) -> None:
    if not 0.0 <= step.level <= 1.0:
        raise ValueError(f"LED pattern {name!r}: level {step.level} is outside 0..1")
    if not step.duration_s > 0:
        raise ValueError(f"LED pattern {name!r}: step duration {step.duration_s} s is not > 0")


def level_at(pattern: Pattern, t_s: float) -> float:
    """The pattern's brightness `t_s` seconds after it started."""
    return pattern.steps[_step_index(pattern, t_s)].level


def next_change_s(pattern: Pattern, t_s: float) -> float:
    """Seconds from `t_s` until the level next differs from the level at `t_s`; inf if never."""
    if pattern.is_steady:
        return math.inf
    steps, index = pattern.steps, _step_index(pattern, t_s)
    wait_s = pattern._step_ends_s[index] - _phase_s(pattern, t_s)
    following = (steps[(index + k) % len(steps)] for k in range(1, len(steps)))
    for step in itertools.takewhile(lambda s: s.level == steps[index].level, following):
        wait_s += step.duration_s
    return wait_s


def level_changes(pattern: Pattern) -> Iterator[tuple[float, float]]:
    """Yield `(offset_s, level)` for every change of level after the start, forever.

    Offsets are computed from the period, not summed step by step, so they do not drift.
    A steady pattern yields nothing.
    """
    if pattern.is_steady:
        return
    steps = pattern.steps
    starts_s = [0.0, *pattern._step_ends_s[:-1]]
    for cycle in itertools.count():
        for index in range(len(steps)):
            if (cycle or index) and steps[index].level != steps[index - 1].level:
                yield cycle * pattern.period_s + starts_s[index], steps[index].level


def pattern_for(state: SupervisorState) -> Pattern:
    """The pattern that shows `state` (DESIGN §4)."""
    return _PATTERNS[state]


def color_for(state: SupervisorState) -> Color:
    """The RGB colour (each channel 0..1) that shows `state` on an RGB LED."""
    return _COLORS[state]


def _phase_s(pattern: Pattern, t_s: float) -> float:
    """Where `t_s` falls within one period: 0 <= phase < period."""
    if math.isinf(pattern.period_s):
        return max(t_s, 0.0)
    phase_s = t_s % pattern.period_s
    return phase_s if phase_s < pattern.period_s else 0.0  # a tiny negative t_s rounds up


def _step_index(pattern: Pattern, t_s: float) -> int:
    return bisect.bisect_right(pattern._step_ends_s, _phase_s(pattern, t_s))


def _steady(name: str, level: float) -> Pattern:
    return Pattern(name, (Step(level, math.inf),))


def _blinks(name: str, count: int, on_s: float, off_s: float, period_s: float) -> Pattern:
    """`count` blinks, then dark for the rest of `period_s`."""
    steps = [Step(level, s) for _ in range(count) for level, s in ((1.0, on_s), (0.0, off_s))]
    steps[-1] = Step(0.0, period_s - count * (on_s + off_s) + off_s)
    return Pattern(name, tuple(steps))


def _pulse(name: str, period_s: float, steps_per_half: int) -> Pattern:
    """Brightness ramps up over half the period and down over the other half."""
    step_s = period_s / (2 * steps_per_half)
    up = [(i + 0.5) / steps_per_half for i in range(steps_per_half)]
    return Pattern(name, tuple(Step(level, step_s) for level in [*up, *reversed(up)]))


def _morse(name: str, letters: Sequence[str]) -> Pattern:
    """Letters written as dots and dashes ("...", "---"), then the gap after a word."""
    steps: list[Step] = []
    for letter in letters:
        for element in letter:
            steps += [Step(1.0, _DOT_S if element == "." else _DASH_S), Step(0.0, _ELEMENT_GAP_S)]
        steps[-1] = Step(0.0, _LETTER_GAP_S)
    steps[-1] = Step(0.0, _WORD_GAP_S)
    return Pattern(name, tuple(steps))


_PATTERNS: dict[SupervisorState, Pattern] = {
    SupervisorState.BOOTING: _pulse("slow heartbeat", period_s=1.0, steps_per_half=10),
    SupervisorState.SETUP: _blinks("2 blinks, pause", 2, on_s=0.2, off_s=0.2, period_s=2.0),
    SupervisorState.READY: _steady("solid on", 1.0),
    SupervisorState.OFFLINE: _blinks("4 blinks, pause", 4, on_s=0.2, off_s=0.2, period_s=3.0),
    SupervisorState.UPDATING: Pattern("fast blink", (Step(1.0, 0.1), Step(0.0, 0.1))),
    SupervisorState.DEGRADED: Pattern(
        "long-short", (Step(1.0, 0.8), Step(0.0, 0.2), Step(1.0, 0.2), Step(0.0, 0.8))
    ),
    SupervisorState.IDENTIFY: Pattern("rapid blink", (Step(1.0, 0.05), Step(0.0, 0.05))),
    SupervisorState.ERROR: _morse("SOS", ["...", "---", "..."]),
    SupervisorState.STOPPING: _steady("off", 0.0),
}

_COLORS: dict[SupervisorState, Color] = {
    SupervisorState.BOOTING: (0.0, 0.0, 1.0),  # blue
    SupervisorState.SETUP: (0.0, 1.0, 1.0),  # cyan
    SupervisorState.READY: (0.0, 1.0, 0.0),  # green
    SupervisorState.OFFLINE: (1.0, 1.0, 0.0),  # yellow
    SupervisorState.UPDATING: (1.0, 0.0, 1.0),  # magenta
    SupervisorState.DEGRADED: (1.0, 0.5, 0.0),  # orange
    SupervisorState.IDENTIFY: (1.0, 1.0, 1.0),  # white
    SupervisorState.ERROR: (1.0, 0.0, 0.0),  # red
    SupervisorState.STOPPING: (0.0, 0.0, 0.0),  # black
}
