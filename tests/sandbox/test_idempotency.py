"""Idempotency keys behave like Stripe's: replay, mismatch, in-flight, expiry, scope."""

from __future__ import annotations

import threading
import time

import pytest
import stripe

from tests.sandbox.conftest import ClientFactory
from tests.sandbox.helpers import (
    EXPRESS_JP,
    EXPRESS_US,
    LOW_BALANCE_US,
    PLATFORM,
    SEEDED_USD,
    debit,
    replayed,
)
from worker.sandbox import AccountSeed, RunningSandbox
from worker.sandbox.seed import Controller, Losses


def test_the_same_key_replays_the_same_payment_and_moves_the_money_once(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit made with a key
    first = debit(client, "order-42", amount=1_000)

    # When the same request is sent again with the same key
    second = debit(client, "order-42", amount=1_000)

    # Then the same body comes back, marked as a replay
    assert second.to_dict() == first.to_dict()
    assert not replayed(first)
    assert replayed(second)
    # And the money moved once
    state = sandbox.admin.state()
    assert len(state.payments) == 1
    assert state.available(EXPRESS_US, "usd") == SEEDED_USD - 1_000


def test_the_same_key_with_other_parameters_is_an_idempotency_error(
    client: stripe.StripeClient,
) -> None:
    # Given a debit made with a key
    debit(client, "order-43", amount=1_000)

    # When the key is reused for a different amount
    with pytest.raises(stripe.IdempotencyError) as refused:
        debit(client, "order-43", amount=1_001)

    # Then Stripe's 400 idempotency_error comes back
    assert refused.value.http_status == 400
    assert refused.value.error is not None
    assert refused.value.error.type == "idempotency_error"


def test_a_key_whose_first_request_is_still_running_gets_409_in_use(
    sandbox: RunningSandbox, make_client: ClientFactory
) -> None:
    # Given a slow sandbox and a first debit with a key still in flight
    sandbox.admin.set_faults(latency_ms=800)
    first_client, second_client = make_client(), make_client()
    results: list[stripe.Charge] = []
    first = threading.Thread(target=lambda: results.append(debit(first_client, "slow-1")))
    first.start()
    time.sleep(0.3)

    # When the same request arrives meanwhile
    with pytest.raises(stripe.APIError) as refused:
        debit(second_client, "slow-1")
    first.join()

    # Then it is a 409 idempotency_key_in_use (an APIError, as from the real API)
    assert refused.value.http_status == 409
    assert refused.value.error is not None
    assert refused.value.error.code == "idempotency_key_in_use"
    # And the first request still succeeded, once
    assert len(results) == 1
    assert len(sandbox.admin.state().payments) == 1


def test_the_sdk_retries_a_409_and_then_receives_the_replay(
    sandbox: RunningSandbox, make_client: ClientFactory
) -> None:
    # Given a first debit still in flight and a client that retries
    sandbox.admin.set_faults(latency_ms=400)
    first_client, retrying = make_client(), make_client(max_network_retries=3)
    results: list[stripe.Charge] = []
    first = threading.Thread(target=lambda: results.append(debit(first_client, "slow-2")))
    first.start()
    time.sleep(0.1)

    # When the retrying client sends the same request
    second = debit(retrying, "slow-2")
    first.join()

    # Then it ends with the first request's payment
    assert second.id == results[0].id
    assert len(sandbox.admin.state().payments) == 1


def test_a_key_expires_24_hours_after_first_use(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit made with a key, and the clock moved almost 24 h on
    first = debit(client, "daily-1")
    sandbox.admin.advance_clock(24 * 3600 - 5)
    assert debit(client, "daily-1").id == first.id

    # When the clock passes 24 h and the key is used again
    sandbox.admin.advance_clock(10)
    again = debit(client, "daily-1")

    # Then it is a new payment: the money moved twice
    assert again.id != first.id
    assert not replayed(again)
    assert again.created >= first.created + 24 * 3600
    assert sandbox.admin.state().available(PLATFORM, "usd") == 2 * 1_500


def test_keys_are_scoped_by_the_stripe_account_header(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a key used by the platform for a debit
    first = debit(client, "shared-key")

    # When the same key is used with a Stripe-Account header and other parameters
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, "shared-key", stripe_account=EXPRESS_JP, amount=9)

    # Then it is not an idempotency_error: it is a new request in another scope
    assert refused.value.error is not None
    assert refused.value.error.type == "invalid_request_error"
    # And each scope replays its own result
    assert debit(client, "shared-key").id == first.id
    with pytest.raises(stripe.InvalidRequestError) as again:
        debit(client, "shared-key", stripe_account=EXPRESS_JP, amount=9)
    assert again.value.headers is not None
    assert again.value.headers.get("Idempotent-Replayed") == "true"


def test_a_validation_failure_is_not_stored_under_the_key(client: stripe.StripeClient) -> None:
    # Given a request with the key that failed validation (missing currency)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.charges.create(
            params={"amount": 100, "source": EXPRESS_US}, options={"idempotency_key": "v-1"}
        )

    # When the corrected request uses the same key
    payment = debit(client, "v-1", amount=100)

    # Then it executes afresh
    assert not replayed(payment)
    assert payment.status == "succeeded"


def test_a_refusal_after_execution_began_is_stored_and_replayed(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit refused for balance_insufficient under a key
    with pytest.raises(stripe.InvalidRequestError):
        debit(client, "topup-1", source=LOW_BALANCE_US, amount=600)
    # And the account topped up since
    sandbox.admin.put_account(
        AccountSeed(
            id=LOW_BALANCE_US,
            country="US",
            default_currency="usd",
            controller=Controller(losses=Losses(payments="application")),
            available={"usd": 10_000},
        )
    )

    # When the same request is retried with the same key
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, "topup-1", source=LOW_BALANCE_US, amount=600)

    # Then the stored refusal is replayed, as Stripe does
    assert refused.value.code == "balance_insufficient"
    assert refused.value.headers is not None
    assert refused.value.headers.get("Idempotent-Replayed") == "true"


def test_gets_ignore_idempotency_keys(client: stripe.StripeClient) -> None:
    # Given a balance read with a key
    first = client.v1.balance.retrieve(options={"idempotency_key": "read-1"})

    # When it is read again with the same key
    second = client.v1.balance.retrieve(options={"idempotency_key": "read-1"})

    # Then neither is a replay
    assert not replayed(first)
    assert not replayed(second)
