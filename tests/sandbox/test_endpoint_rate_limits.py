"""The sandbox's per-endpoint rate limits, as Stripe's: each endpoint has a bucket of its own
beside the global one, and a 429 says which limit refused it."""

from __future__ import annotations

import pytest
import stripe
from pydantic import ValidationError

from tests.sandbox.helpers import EXPRESS_US, debit
from worker.sandbox import Faults, RunningSandbox


def _debits(client: stripe.StripeClient, count: int) -> tuple[int, list[stripe.RateLimitError]]:
    succeeded, limited = 0, []
    for number in range(count):
        try:
            debit(client, f"endpoint-limit-{number}", amount=100)
            succeeded += 1
        except stripe.RateLimitError as refused:
            limited.append(refused)
    return succeeded, limited


def _reason(refusal: stripe.RateLimitError) -> str | None:
    assert refusal.error is not None
    assert refusal.error.code == "rate_limit"
    assert refusal.error.type == "invalid_request_error"
    assert refusal.headers is not None
    reason: str | None = refusal.headers.get("Stripe-Rate-Limited-Reason")
    return reason


def test_debits_beyond_their_endpoints_limit_are_refused_as_endpoint_rate_and_reads_go_on(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given POST /v1/charges limited to 3 requests/s and a global limit well above it
    sandbox.admin.set_faults(rate_limit_rps=100, endpoint_rate_limits={"POST /v1/charges": 3})

    # When 8 debits arrive at once
    succeeded, limited = _debits(client, 8)

    # Then about the endpoint's burst succeeds, the rest are 429 endpoint-rate
    assert 3 <= succeeded <= 4
    assert {_reason(refusal) for refusal in limited} == {"endpoint-rate"}
    injected = sandbox.admin.state().faults_injected
    assert injected == {"rate_limit_endpoint": len(limited)}
    # And another endpoint is not held back by it
    client.v1.accounts.retrieve(EXPRESS_US)
    client.v1.balance.retrieve()


def test_a_star_limits_every_other_endpoint_each_on_its_own(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given every endpoint but the debits limited to 2 requests/s, each separately
    sandbox.admin.set_faults(endpoint_rate_limits={"*": 2, "POST /v1/charges": 100})

    # When 3 balance reads and then 2 account reads arrive at once
    balance: list[str | None] = []
    for _ in range(3):
        try:
            client.v1.balance.retrieve()
            balance.append(None)
        except stripe.RateLimitError as refused:
            balance.append(_reason(refused))
    for _ in range(2):
        client.v1.accounts.retrieve(EXPRESS_US)

    # Then the third balance read was refused for its endpoint; the account reads, on a
    # bucket of their own, went through
    assert balance[:2] == [None, None]
    assert balance[2] == "endpoint-rate"
    assert _debits(client, 3)[0] == 3


def test_the_global_limit_refuses_first_and_a_refused_request_spends_no_token(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a global limit of 3 requests/s and POST /v1/charges at 1/s
    sandbox.admin.set_faults(rate_limit_rps=3, endpoint_rate_limits={"POST /v1/charges": 1})

    # When 3 debits arrive at once: one goes, two are refused by the endpoint's limit
    succeeded, limited = _debits(client, 3)
    assert succeeded == 1
    assert [_reason(refusal) for refusal in limited] == ["endpoint-rate"] * 2

    # Then the refused debits spent no global token: two reads still go, and the third is
    # refused for the global limit
    client.v1.balance.retrieve()
    client.v1.balance.retrieve()
    with pytest.raises(stripe.RateLimitError) as refused:
        client.v1.balance.retrieve()
    assert _reason(refused.value) == "global-rate"
    injected = sandbox.admin.state().faults_injected
    assert injected == {"rate_limit_endpoint": 2, "rate_limit_bucket": 1}


@pytest.mark.parametrize(
    "limits",
    [{"charges": 5.0}, {"POST charges": 5.0}, {"POST /v1/charges": 0.0}],
)
def test_an_endpoint_limit_must_name_an_endpoint_and_a_positive_rate(
    limits: dict[str, float],
) -> None:
    with pytest.raises(ValidationError, match="endpoint_rate_limits"):
        Faults(endpoint_rate_limits=limits)
