"""How an operator enters the limits Stripe granted: the global one and each endpoint
class's, validated at start, divided between a host's processes without Redis."""

from __future__ import annotations

import json

import pytest

from worker.adapters.rate_budget import ENDPOINT_CLASSES
from worker.ops.supervisor import child_environment
from worker.settings import SettingsError, load_settings


def test_every_endpoint_class_defaults_to_stripes_25_per_second() -> None:
    # Given / When a live key's settings without endpoint limits
    settings = load_settings(stripe_api_key="sk_live_abc")
    # Then the global limit is the live one, and every class has Stripe's default
    assert settings.effective_stripe_rate == 100
    assert settings.effective_endpoint_limits == dict.fromkeys(ENDPOINT_CLASSES, 25.0)


def test_a_raise_is_entered_as_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Stripe raised the charges' limit to 100/s, entered as the docs say
    monkeypatch.setenv("DEBIT_WORKER_STRIPE_ENDPOINT_LIMITS", '{"charges": 100}')
    # When the settings are loaded
    limits = load_settings(stripe_api_key="sk_live_abc").effective_endpoint_limits
    # Then the charges go at 100/s and every other class keeps 25/s
    assert limits.pop("charges") == 100
    assert set(limits.values()) == {25.0}


def test_an_unknown_class_is_one_sentence_naming_the_valid_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a class name that is not one (the endpoint's, not the class's)
    monkeypatch.setenv("DEBIT_WORKER_STRIPE_ENDPOINT_LIMITS", '{"POST /v1/charges": 100}')
    # When the settings are loaded / Then the error names the setting and every valid class
    with pytest.raises(SettingsError) as refused:
        load_settings(stripe_api_key="sk_live_abc")
    message = str(refused.value)
    assert "DEBIT_WORKER_STRIPE_ENDPOINT_LIMITS" in message
    assert "'POST /v1/charges' is not an endpoint class" in message
    assert ", ".join(ENDPOINT_CLASSES) in message
    assert "\n" not in message


def test_a_limit_must_be_a_positive_rate() -> None:
    with pytest.raises(SettingsError, match="the limit of charges must be a positive"):
        load_settings(stripe_api_key="sk_live_abc", stripe_endpoint_limits={"charges": 0})


def test_without_redis_each_process_gets_its_share_of_every_endpoint_limit() -> None:
    # Given a host's settings without Redis: the charges raised to 100/s
    settings = load_settings(
        stripe_api_key="sk_live_abc",
        rate_budget_redis_url="",
        stripe_endpoint_limits={"charges": 100},
    )
    # When the environment of each of 4 processes is made
    env = child_environment(settings, 4)
    # Then each allows itself a quarter of every limit
    limits = json.loads(env["DEBIT_WORKER_STRIPE_ENDPOINT_LIMITS"])
    assert limits.pop("charges") == 25
    assert set(limits.values()) == {6.25}
    assert float(env["DEBIT_WORKER_STRIPE_RATE_LIMIT"]) == 25
