import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.status.patterns import (
    Pattern,
    Step,
    color_for,
    level_at,
    level_changes,
    next_change_s,
    pattern_for,
)
from appliance.supervisor import SupervisorState

NAMES = {
    SupervisorState.BOOTING: "slow heartbeat",
    SupervisorState.SETUP: "2 blinks, pause",
    SupervisorState.READY: "solid on",
    SupervisorState.OFFLINE: "4 blinks, pause",
    SupervisorState.UPDATING: "fast blink",
    SupervisorState.DEGRADED: "long-short",
    SupervisorState.IDENTIFY: "rapid blink",
    SupervisorState.ERROR: "SOS",
    SupervisorState.STOPPING: "off",
}


def phases(pattern: Pattern) -> list[tuple[bool, float]]:
    """(on, duration_s) per step, rounded so float sums compare cleanly."""
    return [(step.level >= 0.5, round(step.duration_s, 9)) for step in pattern.steps]


def on_phase_count(pattern: Pattern) -> int:
    return sum(1 for on, _ in phases(pattern) if on)


@pytest.mark.parametrize("state", list(SupervisorState))
def test_every_state_has_its_pattern_and_a_color(state: SupervisorState) -> None:
    assert pattern_for(state).name == NAMES[state]
    assert all(0.0 <= channel <= 1.0 for channel in color_for(state))


def test_ready_is_solid_on_and_stopping_is_off() -> None:
    assert pattern_for(SupervisorState.READY).steps == (Step(1.0, math.inf),)
    assert pattern_for(SupervisorState.STOPPING).steps == (Step(0.0, math.inf),)


def test_setup_is_two_blinks_then_a_pause() -> None:
    pattern = pattern_for(SupervisorState.SETUP)
    assert phases(pattern) == [(True, 0.2), (False, 0.2), (True, 0.2), (False, 1.4)]
    assert on_phase_count(pattern) == 2


def test_offline_is_four_blinks_in_three_seconds() -> None:
    pattern = pattern_for(SupervisorState.OFFLINE)
    assert on_phase_count(pattern) == 4
    assert phases(pattern)[:7] == [(True, 0.2), (False, 0.2)] * 3 + [(True, 0.2)]
    assert pattern.period_s == pytest.approx(3.0)


def test_fast_rapid_and_long_short_timings() -> None:
    assert phases(pattern_for(SupervisorState.UPDATING)) == [(True, 0.1), (False, 0.1)]
    assert phases(pattern_for(SupervisorState.IDENTIFY)) == [(True, 0.05), (False, 0.05)]
    assert phases(pattern_for(SupervisorState.DEGRADED)) == [
        (True, 0.8),
        (False, 0.2),
        (True, 0.2),
        (False, 0.8),
    ]


def test_error_spells_sos_in_morse() -> None:
    symbols = {(True, 0.2): ".", (True, 0.6): "-", (False, 0.2): "", (False, 0.6): " "}
    steps = phases(pattern_for(SupervisorState.ERROR))
    assert steps[-1] == (False, 1.4)
    assert "".join(symbols[step] for step in steps[:-1]) == "... --- ..."


def test_booting_pulses_up_and_down_once_a_second() -> None:
    pattern = pattern_for(SupervisorState.BOOTING)
    levels = [step.level for step in pattern.steps]
    assert pattern.period_s == pytest.approx(1.0)
    assert len(levels) == 20
    assert levels[:10] == sorted(levels[:10]) and levels[10:] == sorted(levels[10:], reverse=True)
    assert sum(step.duration_s for step in pattern.steps if step.level >= 0.5) == pytest.approx(0.5)


def test_colors() -> None:
    assert color_for(SupervisorState.READY) == (0.0, 1.0, 0.0)
    assert color_for(SupervisorState.ERROR) == (1.0, 0.0, 0.0)
    assert color_for(SupervisorState.DEGRADED) == (1.0, 0.5, 0.0)
    assert color_for(SupervisorState.STOPPING) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "steps",
    [(), (Step(1.5, 1.0),), (Step(1.0, 0.0),), (Step(1.0, math.inf), Step(0.0, 1.0))],
)
def test_invalid_patterns_are_refused(steps: tuple[Step, ...]) -> None:
    with pytest.raises(ValueError, match="LED pattern"):
        Pattern("bad", steps)


def test_steady_patterns_never_change() -> None:
    for pattern in (pattern_for(SupervisorState.READY), Pattern("flat", (Step(0.3, 1.0),) * 3)):
        assert next_change_s(pattern, 12.0) == math.inf
        assert list(level_changes(pattern)) == []
        assert level_at(pattern, 1e9) == pattern.steps[0].level


# Durations and times are multiples of powers of two, so float arithmetic is exact and
# periodicity can be compared with ==.
steps_st = st.builds(
    Step,
    level=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    duration_s=st.integers(1, 64).map(lambda n: n / 16),
)
patterns_st = st.lists(steps_st, min_size=1, max_size=12).map(lambda s: Pattern("p", tuple(s)))
times_st = st.integers(-100_000, 100_000).map(lambda n: n / 1024)


@given(patterns_st, times_st, st.integers(-5, 5))
def test_level_at_is_periodic_and_within_range(pattern: Pattern, t_s: float, k: int) -> None:
    level = level_at(pattern, t_s)
    assert 0.0 <= level <= 1.0
    assert level in {step.level for step in pattern.steps}
    assert level_at(pattern, t_s + k * pattern.period_s) == level


@given(patterns_st, times_st)
def test_next_change_is_positive_and_is_where_the_level_changes(
    pattern: Pattern, t_s: float
) -> None:
    wait_s = next_change_s(pattern, t_s)
    assert wait_s > 0
    if math.isfinite(wait_s):
        assert wait_s <= pattern.period_s
        assert level_at(pattern, t_s + wait_s / 2) == level_at(pattern, t_s)
        assert level_at(pattern, t_s + wait_s) != level_at(pattern, t_s)


@given(patterns_st)
def test_level_changes_agree_with_level_at(pattern: Pattern) -> None:
    changes = list(itertools.islice(level_changes(pattern), 30))
    previous_s, previous_level = 0.0, level_at(pattern, 0.0)
    for offset_s, level in changes:
        assert offset_s > previous_s
        assert level != previous_level
        assert level_at(pattern, offset_s) == level
        assert next_change_s(pattern, previous_s) == offset_s - previous_s
        previous_s, previous_level = offset_s, level


@pytest.mark.parametrize("state", list(SupervisorState))
@given(t_s=st.floats(-1e6, 1e6))
def test_real_patterns_behave_for_any_time(state: SupervisorState, t_s: float) -> None:
    pattern = pattern_for(state)
    assert 0.0 <= level_at(pattern, t_s) <= 1.0
    assert next_change_s(pattern, t_s) > 0
