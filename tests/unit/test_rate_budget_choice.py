"""Which rate budget a worker process builds from its settings."""

from __future__ import annotations

from worker.adapters.rate_budget import LocalTokenBucket
from worker.adapters.redis_budget import RedisRateBudget, budget_key
from worker.bootstrap import rate_budget
from worker.settings import load_settings


def test_without_a_redis_url_each_process_keeps_its_own_bucket_at_the_modes_rate() -> None:
    # Given a test-mode key and no Redis URL
    settings = load_settings(stripe_api_key="sk_test_abc", rate_budget_redis_url="")
    # When the budget is built
    budget = rate_budget(settings)
    # Then it is a local bucket at Stripe's test-mode limit
    assert isinstance(budget, LocalTokenBucket)
    assert budget.rate == 25.0


def test_with_a_redis_url_the_budget_is_shared_and_falls_back_to_a_share_per_process() -> None:
    # Given a live key, a Redis URL and four processes sharing it
    settings = load_settings(
        stripe_api_key="sk_live_abc",
        rate_budget_redis_url="redis://127.0.0.1:1/0",
        rate_budget_processes=4,
    )
    # When the budget is built (no connection is made yet)
    budget = rate_budget(settings)
    # Then it is the Redis budget at the live rate, whose fallback is a quarter of it
    assert isinstance(budget, RedisRateBudget)
    assert budget.fallback_rate == 25.0


def test_the_budget_key_names_the_stripe_key_without_revealing_it() -> None:
    # Given / When the Redis key of a Stripe key
    key = budget_key("sk_live_secret")
    # Then it is stable, distinct per Stripe key, and does not contain the key
    assert key == budget_key("sk_live_secret") != budget_key("sk_live_other")
    assert "secret" not in key
