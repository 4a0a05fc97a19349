"""How long the worker waits before retrying, and how fast it lets itself call Stripe."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.adapters.rate_budget import LocalTokenBucket, RateBudget, Unlimited
from worker.backoff import retry_delay

from .fakes import FakeMonotonic

# --- retry_delay ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(min_value=1, max_value=60),
    base=st.floats(min_value=0.1, max_value=10),
    cap=st.floats(min_value=10, max_value=3600),
    at_least=st.none() | st.floats(min_value=0, max_value=600),
    seed=st.integers(),
)
def test_a_delay_is_at_least_what_was_asked_and_at_most_the_cap(
    attempt: int, base: float, cap: float, at_least: float | None, seed: int
) -> None:
    # Given any attempt, base, cap, minimum and random draw
    # When the delay is computed
    delay = retry_delay(attempt, base=base, cap=cap, at_least=at_least, rng=random.Random(seed))

    # Then it honours the minimum (e.g. Stripe's Retry-After) and otherwise the cap
    assert delay >= (at_least or 0.0)
    assert delay <= max(cap, at_least or 0.0)
    assert delay >= min(cap, base * 2 ** (attempt - 1)) / 2


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(min_value=1, max_value=40), seed=st.integers())
def test_the_next_delay_is_never_shorter_than_the_last(attempt: int, seed: int) -> None:
    # Given two consecutive attempts, whatever the jitter draws
    rng = random.Random(seed)

    # When their delays are computed
    this = retry_delay(attempt, base=1, cap=300, rng=rng)
    following = retry_delay(attempt + 1, base=1, cap=300, rng=rng)

    # Then the delay grows (full jitter in [ceiling/2, ceiling] of a doubling ceiling)
    assert following >= this or this == pytest.approx(300, rel=0.5)


def test_delays_grow_until_the_cap() -> None:
    # Given / When the ceilings of attempts 1..12 with base 1 s and cap 60 s
    upper = [retry_delay(n, base=1, cap=60, rng=_always_top()) for n in range(1, 13)]

    # Then they double until they reach the cap
    assert upper == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]


def test_a_seeded_rng_gives_the_same_delays() -> None:
    # Given two generators with the same seed
    # When delays are drawn from each
    first = [retry_delay(n, base=2, cap=100, rng=random.Random(7)) for n in range(1, 8)]
    second = [retry_delay(n, base=2, cap=100, rng=random.Random(7)) for n in range(1, 8)]

    # Then they are the same
    assert first == second


def test_a_minimum_above_the_cap_wins() -> None:
    # Given Stripe asks for 900 s while the cap is 300 s
    # When / Then the worker waits 900 s
    assert retry_delay(1, base=1, cap=300, at_least=900, rng=random.Random(0)) == 900


class _Top(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def _always_top() -> random.Random:
    return _Top()


# --- LocalTokenBucket -----------------------------------------------------------------------


def test_a_full_bucket_lets_a_burst_through_without_waiting() -> None:
    # Given a bucket of 5 per second with a burst of 5
    clock = FakeMonotonic()
    bucket = LocalTokenBucket(5, 5, clock=clock, sleep=clock.sleep)

    # When 5 requests go out at once
    for _ in range(5):
        bucket.acquire()

    # Then none waited, and the sixth waits a fifth of a second
    assert clock.slept == []
    bucket.acquire()
    assert sum(clock.slept) == pytest.approx(0.2)


def test_an_idle_bucket_refills_only_up_to_its_burst() -> None:
    # Given a bucket emptied, then idle for a minute
    clock = FakeMonotonic()
    bucket = LocalTokenBucket(10, 3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        bucket.acquire()
    clock.advance(60)

    # When 4 requests go out
    for _ in range(4):
        bucket.acquire()

    # Then only the burst went without waiting
    assert sum(clock.slept) == pytest.approx(0.1)


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=200),
    burst=st.none() | st.floats(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=120),
)
def test_acquires_over_any_span_never_exceed_rate_times_time_plus_burst(
    rate: float, burst: float | None, gaps: list[float]
) -> None:
    # Given a bucket on a fake clock whose sleep moves the clock
    clock = FakeMonotonic(0.0)
    bucket = LocalTokenBucket(rate, burst, clock=clock, sleep=clock.sleep)
    allowance = burst if burst is not None else max(1.0, rate / 10)

    # When requests arrive after arbitrary pauses
    granted: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        bucket.acquire()
        granted.append(clock.now)

    # Then within every window [granted[i], granted[j]] at most rate*T + burst went out
    for i in range(len(granted)):
        for j in range(i, len(granted)):
            span = granted[j] - granted[i]
            assert j - i + 1 <= rate * span + allowance + 1e-6


def test_a_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        LocalTokenBucket(0)


def test_the_default_burst_is_a_tenth_of_the_rate_but_at_least_one() -> None:
    # Given buckets of 100/s and 2/s with no burst given
    for rate, burst in ((100, 10), (2, 1)):
        clock = FakeMonotonic()
        bucket = LocalTokenBucket(rate, clock=clock, sleep=clock.sleep)

        # When burst + 1 requests go out at once
        for _ in range(burst + 1):
            bucket.acquire()

        # Then only the last one waited (float rounding may add a nanoscale second nap)
        assert [wait for wait in clock.slept if wait > 1e-9] == [pytest.approx(1 / rate)]


def test_without_a_budget_every_call_is_let_through_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given no request budget, in a process where any sleep is recorded instead of waited
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    budget: RateBudget = Unlimited()

    # When far more calls ask for a token than any bucket would let through at once
    granted = 0
    for _ in range(10_000):
        budget.acquire()
        granted += 1

    # Then every one of them was let through, and none waited
    assert granted == 10_000
    assert slept == []
