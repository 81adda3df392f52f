import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.chat.events import SendResult
from appliance.chat.ratelimit import Limit, RateLimitError, RateLimits, TokenBucket


def test_a_full_bucket_lets_a_burst_through_then_paces() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == pytest.approx(0.5)
    assert bucket.take(10.25) == pytest.approx(0.25)
    assert bucket.take(10.5) == 0.0


def test_waiting_does_not_consume() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    bucket.take(0.0)
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(1.0) == 0.0


def test_taking_several_tokens_at_once() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=4)
    assert bucket.take(0.0, n=3) == 0.0
    assert bucket.take(0.0, n=3) == pytest.approx(2.0)


def test_a_429_blocks_until_retry_after_then_the_bucket_carries_on() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=5)
    bucket.block_for(100.0, retry_after_s=3.0)
    assert bucket.blocked_until() == 103.0
    assert bucket.take(100.0) == pytest.approx(3.0)
    assert bucket.take(102.5) == pytest.approx(0.5)
    assert bucket.take(103.0) == 0.0


def test_an_earlier_block_never_shortens_a_later_one() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    bucket.block_until(50.0)
    bucket.block_until(20.0)
    assert bucket.take(10.0) == pytest.approx(40.0)


def test_never_blocked_reports_minus_infinity() -> None:
    assert TokenBucket(1.0, 1).blocked_until() == -math.inf


def test_a_clock_stepping_back_mints_no_tokens() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    bucket.take(10.0)
    assert bucket.take(5.0) > 0
    assert bucket.take(10.5) == pytest.approx(0.5)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0), (math.nan, 1)])
def test_impossible_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(RateLimitError) as caught:
        TokenBucket(rate, burst)
    assert caught.value.code == "rate_limit_invalid"


@pytest.mark.parametrize("n", [0, 3])
def test_impossible_takes_are_refused(n: int) -> None:
    with pytest.raises(RateLimitError):
        TokenBucket(1.0, 2).take(0.0, n)


def test_rate_limits_keep_one_bucket_per_key() -> None:
    limits = RateLimits(Limit(1.0, 1), {"discord": Limit(5.0, 5)})
    assert limits.bucket("telegram") is limits.bucket("telegram")
    assert limits.bucket("discord").burst == 5
    assert limits.take("telegram", 0.0) == 0.0
    assert limits.take("telegram", 0.0) > 0
    assert limits.take("matrix", 0.0) == 0.0


def test_rate_limits_honour_a_send_result_retry_after() -> None:
    limits = RateLimits(Limit(10.0, 10))
    limits.honour("telegram", 5.0, SendResult.retry("rate_limited", retry_after_s=7.0))
    limits.honour("telegram", 5.0, SendResult.retry("server_error"))
    limits.honour("telegram", 5.0, SendResult.sent("m1"))
    assert limits.take("telegram", 6.0) == pytest.approx(6.0)
    assert limits.take("discord", 6.0) == 0.0
    limits.block_until("discord", 9.0)
    limits.block_for("slack", 6.0, 1.0)
    assert limits.take("discord", 6.0) == pytest.approx(3.0)
    assert limits.take("slack", 6.5) == pytest.approx(0.5)


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0),
        st.one_of(st.none(), st.floats(min_value=0.0, max_value=10.0)),
    ),
    min_size=1,
    max_size=200,
)


@given(
    st.floats(min_value=0.01, max_value=100.0),
    st.integers(min_value=1, max_value=20),
    steps,
    st.floats(min_value=0.0, max_value=20.0),
)
def test_allowed_takes_in_any_window_never_exceed_burst_plus_rate_times_window(
    rate: float, burst: int, script: list[tuple[float, float | None]], window_s: float
) -> None:
    bucket, now, allowed = TokenBucket(rate, burst), 0.0, []
    for gap_s, retry_after_s in script:
        now += gap_s
        if retry_after_s is not None:
            bucket.block_for(now, retry_after_s)
        if bucket.take(now) == 0.0:
            allowed.append(now)
    for start in allowed:
        in_window = [t for t in allowed if start <= t <= start + window_s]
        assert len(in_window) <= math.floor(burst + rate * (window_s + 1e-6) + 1e-9)


@given(
    st.floats(min_value=0.01, max_value=100.0),
    st.integers(min_value=1, max_value=20),
    st.floats(min_value=0.0, max_value=1e7),
    steps,
)
def test_waiting_the_time_given_is_always_enough(
    rate: float, burst: int, start: float, script: list[tuple[float, float | None]]
) -> None:
    bucket, now = TokenBucket(rate, burst), start
    for gap_s, retry_after_s in script:
        now += gap_s
        if retry_after_s is not None:
            bucket.block_for(now, retry_after_s)
        wait_s = bucket.take(now)
        assert wait_s >= 0.0
        if wait_s:
            now += wait_s
            assert bucket.take(now) == 0.0


@given(st.floats(min_value=0.0, max_value=1e6), st.floats(min_value=0.001, max_value=3600.0))
def test_a_block_returns_exactly_the_remaining_wait(now: float, retry_after_s: float) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    bucket.block_for(now, retry_after_s)
    assert bucket.take(now) == pytest.approx(retry_after_s)
    assert bucket.take(now + retry_after_s) == 0.0
