"""The tuner's decisions on synthetic measurements, and when it asks to tune again."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.hardware.throttling import ThrottleWatch
from appliance.hardware.tuner import (
    Candidate,
    Measurement,
    TunedProfile,
    TuningKey,
    decide,
    default_candidate,
    pick_contender,
    retune_reason,
)

DEFAULT = default_candidate("ai-edge-litert")
KEY = TuningKey("Raspberry Pi 4 Model B Rev 1.4", "ai-edge-litert 2.3.0", "a" * 64)


def measured(threads: int, rate: float, p95_ms: float = 5.0, batch: int = 1) -> Measurement:
    return Measurement(Candidate("ai-edge-litert", threads, True, batch), rate, p95_ms / 2, p95_ms)


def profile(key: TuningKey = KEY, threads: int = 3, gain: float = 2.0) -> TunedProfile:
    return TunedProfile(
        key=key,
        board_profile="pi4",
        chosen=measured(threads, 200.0 * gain, batch=4),
        default=measured(1, 200.0),
        gain=gain,
        tuned_at=1_800_000_000.0,
        reason="no tuned profile yet",
    )


def test_the_fastest_within_budget_wins() -> None:
    results = [measured(1, 100), measured(2, 180), measured(3, 250, p95_ms=400)]
    assert pick_contender(results, budget_ms=250).candidate.threads == 2


def test_near_ties_go_to_fewer_threads() -> None:
    results = [measured(1, 100), measured(2, 200), measured(3, 203)]
    assert pick_contender(results, budget_ms=250).candidate.threads == 2


def test_when_nothing_meets_the_budget_the_fastest_is_the_contender() -> None:
    results = [measured(1, 10, p95_ms=900), measured(2, 15, p95_ms=700)]
    assert pick_contender(results, budget_ms=250).candidate.threads == 2


def test_a_winner_inside_the_noise_margin_keeps_the_default() -> None:
    decision = decide(measured(2, 102), measured(1, 100), budget_ms=250, min_gain=0.03)
    assert decision.chosen.candidate == DEFAULT and decision.gain == 1.0
    assert "noise margin" in decision.note


def test_a_clear_winner_reports_its_paired_gain() -> None:
    decision = decide(measured(3, 250), measured(1, 100), budget_ms=250)
    assert decision.chosen.candidate.threads == 3 and decision.gain == pytest.approx(2.5)


def test_a_winner_that_misses_the_budget_in_the_pair_loses() -> None:
    decision = decide(measured(3, 250, p95_ms=300), measured(1, 100), budget_ms=250)
    assert decision.chosen.candidate == DEFAULT and decision.gain == 1.0


rates = st.floats(min_value=0.1, max_value=1e5, allow_nan=False)
latencies = st.floats(min_value=0.01, max_value=1e4, allow_nan=False)


@given(
    st.lists(
        st.tuples(st.integers(1, 4), rates, latencies, st.sampled_from([1, 2, 4, 8])), max_size=12
    ),
    rates,
    latencies,
    rates,
    latencies,
    st.floats(min_value=0.1, max_value=1e4),
    st.floats(min_value=0, max_value=0.5),
)
def test_chosen_is_never_slower_than_the_default(
    others: list[tuple[int, float, float, int]],
    default_rate: float,
    default_p95: float,
    paired_rate: float,
    paired_p95: float,
    budget_ms: float,
    min_gain: float,
) -> None:
    default = Measurement(DEFAULT, default_rate, default_p95 / 2, default_p95)
    results = [default] + [measured(t, r, p, b) for t, r, p, b in others if (t, b) != (1, 1)]
    contender = pick_contender(results, budget_ms)
    paired = Measurement(contender.candidate, paired_rate, paired_p95 / 2, paired_p95)
    decision = decide(paired if contender.candidate != DEFAULT else default, default, budget_ms)
    assert decision.gain >= 1.0
    assert decision.chosen.throughput_per_s >= decision.default.throughput_per_s
    if decision.chosen.candidate != DEFAULT:
        assert decision.gain > 1.03
    else:
        assert decision.gain == 1.0
    decide(paired, default, budget_ms, min_gain)  # any margin: never raises


def test_profiles_round_trip_through_their_stored_form() -> None:
    stored = profile()
    again = TunedProfile.from_json(stored.to_json())
    assert again.key == stored.key and again.chosen == stored.chosen
    assert again.name == stored.name == "pi4-3t-xnnpack-b4"
    assert again.birth() == {
        "profile": "pi4-3t-xnnpack-b4",
        "threads": 3,
        "xnnpack": True,
        "batch": 4,
        "runtime": "ai-edge-litert",
        "tuned_at": 1_800_000_000.0,
        "gain": 2.0,
    }


def test_the_profile_key_names_board_runtime_and_model() -> None:
    assert KEY.storage_key == (
        "tuner/profile/raspberry-pi-4-model-b-rev-1.4/ai-edge-litert-2.3.0/" + "a" * 64
    )


def test_retune_reasons() -> None:
    assert retune_reason(profile(), profile(), KEY) is None
    assert retune_reason(None, None, KEY) == "no tuned profile yet"
    new_model = TuningKey(KEY.board, KEY.runtimes, "b" * 64)
    assert retune_reason(None, profile(), new_model).startswith("model changed")  # type: ignore[union-attr]
    new_runtime = TuningKey(KEY.board, "ai-edge-litert 2.4.0", KEY.model_sha256)
    assert retune_reason(None, profile(), new_runtime) == (
        "runtime changed (ai-edge-litert 2.3.0 -> ai-edge-litert 2.4.0)"
    )


def test_throttling_fires_once_per_sustained_spell() -> None:
    watch = ThrottleWatch(sustained_s=300, min_interval_s=3600)
    assert not watch.observe(0, True)
    assert not watch.observe(299, True)
    assert watch.observe(300, True)
    assert not watch.observe(600, True)  # same spell
    assert not watch.observe(700, False)
    assert not watch.observe(800, True)
    assert not watch.observe(1200, True)  # a new spell, but within the minimum interval
    assert not watch.observe(4000, False)
    assert not watch.observe(4100, True)
    assert watch.observe(4400, True)


def test_short_throttling_blips_never_fire() -> None:
    watch = ThrottleWatch(sustained_s=300, min_interval_s=0)
    for t in range(0, 3000, 100):
        assert not watch.observe(t, t % 200 == 0)
