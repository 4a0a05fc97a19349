"""Injected faults: 429s, 500s, dropped connections, latency and the rate limiter."""

from __future__ import annotations

import statistics
import time

import pytest
import stripe

from tests.sandbox.conftest import ClientFactory
from tests.sandbox.helpers import EXPRESS_US, SEEDED_USD, debit, replayed
from worker.sandbox import Faults, RunningSandbox
from worker.sandbox.faults import FaultInjector


def test_an_injected_429_is_not_stored_so_the_same_key_then_succeeds(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next request will be rate limited
    sandbox.admin.set_faults(script=("rate_limit",))

    # When a debit is sent
    with pytest.raises(stripe.RateLimitError) as limited:
        debit(client, "rl-1")

    # Then it is a 429 rate_limit that names no limiter (it came from none)
    assert limited.value.http_status == 429
    assert limited.value.error is not None
    assert limited.value.error.code == "rate_limit"
    assert limited.value.headers is not None
    assert "Stripe-Rate-Limited-Reason" not in limited.value.headers
    # And retrying with the same key executes it for the first time
    payment = debit(client, "rl-1")
    assert not replayed(payment)
    assert sandbox.admin.state().faults_injected == {"rate_limit": 1}


def test_an_injected_500_is_stored_and_replayed_and_moves_nothing(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next debit fails with a 500
    sandbox.admin.set_faults(script=("server_error",))
    with pytest.raises(stripe.APIError) as failed:
        debit(client, "e500-1")
    assert failed.value.http_status == 500

    # When it is retried with the same key
    with pytest.raises(stripe.APIError) as again:
        debit(client, "e500-1")

    # Then the stored 500 is replayed and no money moved
    assert again.value.headers is not None
    assert again.value.headers.get("Idempotent-Replayed") == "true"
    assert again.value.error is not None
    assert again.value.error.type == "api_error"
    assert sandbox.admin.state().available(EXPRESS_US, "usd") == SEEDED_USD


def test_a_connection_dropped_after_the_effect_is_healed_by_sdk_retries_with_the_same_key(
    sandbox: RunningSandbox, make_client: ClientFactory
) -> None:
    # Given the next debit's response will be lost after the money moved
    sandbox.admin.set_faults(script=("drop_after",))
    client = make_client(max_network_retries=2)

    # When the SDK (retrying, same key) sends the debit
    payment = debit(client, "drop-a-1", amount=2_500)

    # Then it ends with the stored payment, replayed, and the money moved once
    assert replayed(payment)
    state = sandbox.admin.state()
    assert [p["id"] for p in state.payments] == [payment.id]
    assert state.available(EXPRESS_US, "usd") == SEEDED_USD - 2_500
    assert state.faults_injected == {"drop_after": 1}


def test_a_connection_dropped_after_the_effect_leaves_the_money_moved_and_the_key_stored(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next debit's response will be lost after the money moved
    sandbox.admin.set_faults(script=("drop_after",))

    # When a client without retries sends it
    with pytest.raises(stripe.APIConnectionError):
        debit(client, "drop-a-2")

    # Then the money moved although the client saw only a connection error
    assert len(sandbox.admin.state().payments) == 1
    # And a later retry with the key gets that payment
    payment = debit(client, "drop-a-2")
    assert replayed(payment)
    assert payment.id == sandbox.admin.state().payments[0]["id"]


def test_a_connection_dropped_before_the_effect_moves_nothing_and_keeps_no_key(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next debit's connection will be cut before anything happens
    sandbox.admin.set_faults(script=("drop_before",))

    # When it is sent
    with pytest.raises(stripe.APIConnectionError):
        debit(client, "drop-b-1")

    # Then nothing moved and the key was not kept
    state = sandbox.admin.state()
    assert state.payments == []
    assert state.idempotency_keys == 0
    # And a retry with the key executes for the first time
    assert not replayed(debit(client, "drop-b-1"))


def test_the_rate_limiter_refuses_requests_beyond_its_rate_with_429(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a limit of 5 requests per second
    sandbox.admin.set_faults(rate_limit_rps=5)

    # When 15 reads arrive at once
    succeeded = 0
    limited: list[stripe.RateLimitError] = []
    for _ in range(15):
        try:
            client.v1.balance.retrieve()
            succeeded += 1
        except stripe.RateLimitError as caught:
            limited.append(caught)

    # Then about the bucket's burst succeeds and the rest are 429s
    assert 5 <= succeeded <= 7
    assert sandbox.admin.state().faults_injected["rate_limit_bucket"] == len(limited)
    for refusal in limited:
        assert refusal.error is not None
        assert refusal.error.code == "rate_limit"
        assert refusal.headers is not None
        assert refusal.headers.get("Stripe-Rate-Limited-Reason") == "global-rate"


def test_fixed_latency_delays_each_response(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given 150 ms of latency
    sandbox.admin.set_faults(latency_ms=150)

    # When the balance is read
    started = time.perf_counter()
    client.v1.balance.retrieve()

    # Then the answer took at least that long
    assert time.perf_counter() - started >= 0.15


def test_lognormal_latency_matches_its_p50_and_p99() -> None:
    # Given a latency distribution with p50 = 40 ms and p99 = 400 ms
    injector = FaultInjector(Faults(latency_p50_ms=40, latency_p99_ms=400, random_seed=3))

    # When 20,000 delays are drawn
    draws = sorted(injector.latency_seconds() * 1000 for _ in range(20_000))

    # Then their median and 99th percentile are close to the configured ones
    assert statistics.median(draws) == pytest.approx(40, rel=0.05)
    assert draws[int(0.99 * len(draws))] == pytest.approx(400, rel=0.1)


def test_a_random_seed_reproduces_the_same_fault_sequence(
    sandbox: RunningSandbox, make_client: ClientFactory
) -> None:
    # Given faults drawn at random with a seed
    faults = Faults(server_error_share=0.3, rate_limit_share=0.2, random_seed=11)
    client = make_client()

    def run() -> list[str]:
        sandbox.admin.reset()
        sandbox.admin.set_faults(faults)
        seen = []
        for _ in range(20):
            try:
                client.v1.balance.retrieve()
                seen.append("ok")
            except stripe.StripeError as failed:
                seen.append(str(failed.http_status))
        return seen

    # When the same requests run twice
    first, second = run(), run()

    # Then the same faults hit the same requests
    assert first == second
    assert {"ok", "429", "500"} <= set(first)


def test_writes_only_faults_leave_reads_alone(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given every eligible request fails, but only writes are eligible
    sandbox.admin.set_faults(server_error_share=1.0, writes_only=True)

    # When the worker reads an account and then debits
    client.v1.accounts.retrieve(EXPRESS_US)
    with pytest.raises(stripe.APIError):
        debit(client, "w-1")

    # Then only the debit failed
    assert sandbox.admin.state().faults_injected == {"server_error": 1}
