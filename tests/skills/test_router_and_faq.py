import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.skills.faq import FaqError, FaqIndex, parse_faq
from appliance.skills.router import UNKNOWN, IntentRouter

E = np.eye(4, dtype=np.float32)


def router(**kwargs: float) -> IntentRouter:
    return IntentRouter(
        {"greeting": E[[0]], "thanks": E[[1]], UNKNOWN: E[[3]]}, threshold=0.5, k=1, **kwargs
    )


def test_routes_to_the_nearest_intent() -> None:
    route = router().route([0.9, 0.1, 0.0, 0.0])
    assert route.intent == "greeting" and route.confidence > 0.9
    assert route.runner_up == "thanks"


def test_below_threshold_or_closest_to_unknown_is_unknown() -> None:
    assert router().route([0.3, 0.3, 0.9, 0.0]).intent == UNKNOWN  # weak everywhere
    assert router().route([0.1, 0.0, 0.0, 1.0]).intent == UNKNOWN  # an out-of-scope example wins


def test_ambiguous_messages_are_unknown_with_a_margin() -> None:
    assert router(margin=0.1).route([1.0, 0.95, 0.0, 0.0]).intent == UNKNOWN
    assert router().route([1.0, 0.95, 0.0, 0.0]).intent == "greeting"


def test_top_k_mean_scores() -> None:
    r = IntentRouter({"a": np.array([[1, 0], [0, 1]], dtype=np.float32)}, threshold=0, k=2)
    assert r.scores([1, 0])["a"] == pytest.approx(0.5)


@given(st.lists(st.floats(-1, 1), min_size=4, max_size=4))
def test_confidence_is_a_cosine(vector: list[float]) -> None:
    route = router().route(vector)
    assert -1.0 <= route.confidence <= 1.0


FAQ = """# Shop FAQ

Intro text is ignored.

## When are you open?
Monday to Saturday, 9 to 18.

## What is the guest Wi-Fi password?
Ask at the till.
It changes weekly.
"""


def test_parse_faq() -> None:
    first, second = parse_faq(FAQ)
    assert (first.question, first.answer, first.line) == (
        "When are you open?",
        "Monday to Saturday, 9 to 18.",
        5,
    )
    assert second.answer == "Ask at the till. It changes weekly."


@pytest.mark.parametrize("text", ["", "# title only\n", "## Question without answer\n\n"])
def test_bad_faq_is_refused(text: str) -> None:
    with pytest.raises(FaqError):
        parse_faq(text, "faq.md")


def test_faq_index_matches_above_threshold() -> None:
    entries = parse_faq(FAQ)
    index = FaqIndex(entries, E[:2], threshold=0.8)
    assert index.match([0.99, 0.05, 0, 0])[0] == entries[0]
    assert index.match([0, 0, 1, 0])[0] is None


@given(st.text(max_size=300))
def test_parse_faq_never_crashes(text: str) -> None:
    try:
        entries = parse_faq(text)
    except FaqError:
        return
    assert all(e.question and e.answer for e in entries)
