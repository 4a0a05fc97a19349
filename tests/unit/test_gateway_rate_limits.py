"""The gateway and the rate budget: each Stripe call asks for its endpoint class's token at
its priority, and a 429 tells the budget which limit Stripe enforced.

A real StripeClient over a fake HTTP transport (handed in through `http_client=`); the
budget is a fake that records what it was asked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import stripe
from prometheus_client import REGISTRY

from worker.adapters.rate_budget import ENDPOINT_CLASS, ENDPOINT_CLASSES, Priority, in_background
from worker.adapters.stripe_gateway import StripeGateway
from worker.domain.errors import TransientFailure
from worker.domain.types import DebitCharge

ACCOUNT_ID = "acct_1ExpressUS00000001"
ACCOUNT = {
    "id": ACCOUNT_ID,
    "object": "account",
    "country": "US",
    "default_currency": "usd",
    "type": "express",
}
REFUND = {
    "id": "re_1",
    "object": "refund",
    "amount": 500,
    "currency": "usd",
    "status": "succeeded",
    "charge": {"id": "ch_1", "object": "charge", "on_behalf_of": ACCOUNT_ID},
}
BALANCE = {"object": "balance", "available": [{"amount": 900, "currency": "usd"}], "pending": []}
CHARGE = {
    "id": "py_1Abc",
    "object": "charge",
    "amount": 2500,
    "currency": "usd",
    "created": 1_700_000_000,
    "paid": True,
    "source": {"id": ACCOUNT_ID, "object": "account"},
    "status": "succeeded",
}
DEBIT = DebitCharge(
    request_id="req-1",
    account=ACCOUNT_ID,
    amount=2500,
    currency="usd",
    reason="platform_charge",
    refund=None,
    description=None,
)
RATE_LIMITED = "debit_worker_stripe_rate_limited_total"


class FakeTransport(stripe.HTTPClient):
    """Answers each request with the next queued (status, body, headers)."""

    name = "fake-transport"

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[int, Mapping[str, Any], dict[str, str]]] = []

    def answer(self, status: int, body: Mapping[str, Any], **headers: str) -> None:
        self.answers.append((status, body, {"Request-Id": "req_fake", **headers}))

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        status, body, answer_headers = self.answers.pop(0)
        return json.dumps(body), status, answer_headers

    def close(self) -> None:
        return None


class RecordingBudget:
    """Lets every call through; records the tokens asked for and the 429s reported."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Priority]] = []
        self.limited: list[tuple[str, str | None, float | None]] = []

    def acquire(self, endpoint_class: str, priority: Priority) -> None:
        self.asked.append((endpoint_class, priority))

    def rate_limited(
        self, endpoint_class: str, reason: str | None, retry_after: float | None
    ) -> None:
        self.limited.append((endpoint_class, reason, retry_after))


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def budget() -> RecordingBudget:
    return RecordingBudget()


@pytest.fixture
def gateway(transport: FakeTransport, budget: RecordingBudget) -> StripeGateway:
    client = stripe.StripeClient("sk_test_fake", http_client=transport, max_network_retries=0)
    return StripeGateway(client, budget)


def rate_limit(code: str = "rate_limit") -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "code": code, "message": "Too many"}}


def count(endpoint: str, reason: str) -> float:
    return REGISTRY.get_sample_value(RATE_LIMITED, {"endpoint": endpoint, "reason": reason}) or 0.0


def test_each_call_takes_its_endpoint_class_token_at_its_priority(
    gateway: StripeGateway, transport: FakeTransport, budget: RecordingBudget
) -> None:
    # Given Stripe answers the debit path's reads and the charge
    for body in (ACCOUNT, ACCOUNT, REFUND, BALANCE, CHARGE, ACCOUNT):
        transport.answer(200, body)

    # When a debit's calls are made, and the platform read once more in the background
    gateway.platform()
    gateway.account(ACCOUNT_ID)
    gateway.refund("re_1")
    gateway.available_balance(ACCOUNT_ID, "usd")
    gateway.create_debit(DEBIT)
    with in_background():
        gateway.platform()

    # Then the charge went at the debits' priority, the reads it waits for next, each in its
    # class, and the warm-up's read in the background
    assert budget.asked == [
        ("account_reads", Priority.UNBLOCKS_DEBIT),
        ("account_reads", Priority.UNBLOCKS_DEBIT),
        ("refund_reads", Priority.UNBLOCKS_DEBIT),
        ("balance_reads", Priority.UNBLOCKS_DEBIT),
        ("charges", Priority.DEBIT),
        ("account_reads", Priority.BACKGROUND),
    ]


def test_every_endpoint_the_gateway_calls_counts_against_a_known_class() -> None:
    # Given / When the map of endpoints / Then each of Stripe's limits the worker meets has
    # its class, and only the charges are POSTs
    assert set(ENDPOINT_CLASS.values()) == set(ENDPOINT_CLASSES)
    assert [e for e in ENDPOINT_CLASS if e.startswith("POST")] == ["POST /v1/charges"]


def test_a_429_naming_the_endpoint_limit_backs_off_that_class_and_is_counted_by_reason(
    gateway: StripeGateway, transport: FakeTransport, budget: RecordingBudget
) -> None:
    # Given Stripe refuses the charge: its endpoint's limit
    transport.answer(429, rate_limit(), **{"Stripe-Rate-Limited-Reason": "endpoint-rate"})
    before = count("POST /v1/charges", "endpoint-rate")

    # When the debit is created
    with pytest.raises(TransientFailure, match="endpoint-rate") as raised:
        gateway.create_debit(DEBIT)

    # Then it is transient, the budget backs off the charges' limit, and the 429 is counted
    # under its endpoint and reason
    assert raised.value.retry_after is None
    assert budget.limited == [("charges", "endpoint-rate", None)]
    assert count("POST /v1/charges", "endpoint-rate") - before == 1


def test_a_429_without_a_reason_reports_none_and_stripes_retry_after(
    gateway: StripeGateway, transport: FakeTransport, budget: RecordingBudget
) -> None:
    # Given Stripe refuses an account read without saying why, asking for 2 s
    transport.answer(429, rate_limit(), **{"Retry-After": "2"})
    before = count("GET /v1/accounts/{id}", "none")

    # When the account is read / Then the budget hears of it with no reason and Stripe's wait
    with pytest.raises(TransientFailure):
        gateway.account(ACCOUNT_ID)
    assert budget.limited == [("account_reads", None, 2.0)]
    assert count("GET /v1/accounts/{id}", "none") - before == 1


def test_a_reason_stripe_is_not_known_to_give_is_passed_on_but_counted_as_other(
    gateway: StripeGateway, transport: FakeTransport, budget: RecordingBudget
) -> None:
    # Given Stripe refuses a refund read for a reason not seen before
    transport.answer(429, rate_limit(), **{"Stripe-Rate-Limited-Reason": "moon-phase"})
    before = count("GET /v1/refunds/{id}", "other")

    # When the refund is read
    with pytest.raises(TransientFailure):
        gateway.refund("re_1")

    # Then the budget decides what it means (the global limit), and the metric's labels stay
    # bounded
    assert budget.limited == [("refund_reads", "moon-phase", None)]
    assert count("GET /v1/refunds/{id}", "other") - before == 1


def test_a_429_lock_timeout_is_contention_on_one_object_and_backs_off_nothing(
    gateway: StripeGateway, transport: FakeTransport, budget: RecordingBudget
) -> None:
    # Given Stripe refuses the charge because another request holds the object's lock
    transport.answer(429, rate_limit("lock_timeout"))

    # When the debit is created / Then it is transient, and no limit is backed off
    with pytest.raises(TransientFailure, match="lock_timeout"):
        gateway.create_debit(DEBIT)
    assert budget.limited == []
