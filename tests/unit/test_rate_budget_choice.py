"""Which rate budget a worker process builds from its settings."""

from __future__ import annotations

from worker.adapters.rate_budget import LocalRateBudget
from worker.adapters.redis_budget import RedisRateBudget, budget_key
from worker.bootstrap import rate_budget
from worker.settings import load_settings


def test_without_a_redis_url_each_process_keeps_its_own_budget_at_stripes_limits() -> None:
    # Given a test-mode key, no Redis URL, and Stripe's raise of the charges' limit to 100/s
    settings = load_settings(
        stripe_api_key="sk_test_abc",
        rate_budget_redis_url="",
        stripe_endpoint_limits={"charges": 100},
    )
    # When the budget is built
    budget = rate_budget(settings)
    # Then it is a local budget at the test-mode global limit, 100/s for the charges and
    # Stripe's default 25/s for every other endpoint class
    assert isinstance(budget, LocalRateBudget)
    rates = budget.rates
    assert (rates.pop("global"), rates.pop("charges")) == (25.0, 100.0)
    assert set(rates.values()) == {25.0}


def test_with_a_redis_url_the_budget_is_shared_and_falls_back_to_a_share_per_process() -> None:
    # Given a live key, a Redis URL and four processes sharing it
    settings = load_settings(
        stripe_api_key="sk_live_abc",
        rate_budget_redis_url="redis://127.0.0.1:1/0",
        rate_budget_processes=4,
    )
    # When the budget is built (no connection is made yet)
    budget = rate_budget(settings)
    # Then it is the Redis budget, whose fallback is a quarter of each limit: the live
    # global limit and Stripe's default per-endpoint limit
    assert isinstance(budget, RedisRateBudget)
    assert budget.fallback_rates["global"] == 25.0
    assert budget.fallback_rates["charges"] == 6.25


def test_the_budget_key_names_the_stripe_key_without_revealing_it() -> None:
    # Given / When the Redis key of a Stripe key
    key = budget_key("sk_live_secret")
    # Then it is stable, distinct per Stripe key, and does not contain the key
    assert key == budget_key("sk_live_secret") != budget_key("sk_live_other")
    assert "secret" not in key
