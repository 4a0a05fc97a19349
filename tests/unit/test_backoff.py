"""How long the worker waits before retrying (the rate budget: test_rate_budget.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backoff import retry_delay


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
