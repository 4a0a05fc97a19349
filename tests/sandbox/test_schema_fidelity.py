"""What the sandbox says and accepts matches Stripe's OpenAPI description (2023-08-16).

Every exchange in every test is already checked by the `make_client` fixture; these tests
make sure each endpoint and each error shape is covered at least once, and that the checker
itself catches what it should.
"""

from __future__ import annotations

import pytest
import stripe

from tests.sandbox.fidelity import SchemaCheckingClient
from tests.sandbox.helpers import EXPRESS_US, REFUND_USD, debit, debit_params
from worker.sandbox import RunningSandbox, schema_check
from worker.sandbox.params import CHARGE_PARAMS


def test_every_endpoint_answers_with_bodies_that_fit_the_schema(
    sandbox: RunningSandbox,
) -> None:
    # Given a client whose every exchange is checked against the spec
    http_client = SchemaCheckingClient()
    client = stripe.StripeClient(
        sandbox.api_key, base_addresses={"api": sandbox.url}, http_client=http_client
    )

    # When every endpoint is called once, successfully and unsuccessfully
    payment = debit(client, "fidelity-1")
    assert isinstance(payment.source_transfer, str)
    client.v1.charges.retrieve(payment.id)
    client.v1.transfers.retrieve(payment.source_transfer)
    client.v1.accounts.retrieve_current()
    client.v1.accounts.retrieve(EXPRESS_US)
    client.v1.balance.retrieve()
    client.v1.balance.retrieve(options={"stripe_account": EXPRESS_US})
    client.v1.refunds.retrieve(REFUND_USD)
    with pytest.raises(stripe.InvalidRequestError):
        debit(client, amount=10**9)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.accounts.retrieve("acct_1Nobody00000000001")

    # Then all ten exchanges agree with the spec
    assert http_client.exchanges == 10
    assert http_client.problems == []


def test_unusual_charge_answers_and_expanded_refunds_fit_the_schema(
    sandbox: RunningSandbox,
) -> None:
    # Given a client whose every exchange is checked against the spec
    http_client = SchemaCheckingClient()
    client = stripe.StripeClient(
        sandbox.api_key, base_addresses={"api": sandbox.url}, http_client=http_client
    )
    answers = ("pending", "failed", "other_amount", "other_currency", "other_source")
    sandbox.admin.set_faults(charge_answers=answers)

    # When a debit is answered each way, and refunds are read with their charges expanded
    for n, _ in enumerate(answers):
        debit(client, f"answer-{n}")
    for refund in ("re_1RefundFailed0000001", "re_1RefundOtherAcct0001", REFUND_USD):
        client.v1.refunds.retrieve(refund, params={"expand": ["charge"]})
    client.v1.charges.retrieve("ch_1SaleOtherAcct00001")

    # Then every exchange agrees with the spec
    assert http_client.exchanges == len(answers) + 4
    assert http_client.problems == []


def test_the_worker_style_debit_sends_only_parameters_stripe_knows() -> None:
    # Given the parameters the worker sends for a debit
    sent = debit_params()

    # When they are compared with POST /v1/charges in the spec
    unknown = schema_check.unknown_parameters("/v1/charges", "post", sent)

    # Then none is unknown
    assert unknown == []


def test_the_sandbox_knows_exactly_the_charge_parameters_the_spec_declares() -> None:
    # Given the spec's parameters for POST /v1/charges
    declared = schema_check.known_parameters("/v1/charges", "post")

    # When compared with the names the sandbox accepts without parameter_unknown
    # Then they are the same
    assert declared == CHARGE_PARAMS


def test_the_checker_flags_a_wrongly_typed_or_missing_field() -> None:
    # Given a payment body with a string amount and without `paid`
    body = {"id": "py_1", "object": "charge", "amount": "15", "currency": "usd"}

    # When it is checked
    problems = schema_check.body_problems("charge", body)

    # Then both faults are reported
    assert any(p.startswith("amount:") for p in problems)
    assert any("'paid' is a required property" in p for p in problems)


def test_the_checker_allows_fields_newer_api_versions_added(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given an account with controller.losses (not in the 2023-08-16 schema)
    account = client.v1.accounts.retrieve(EXPRESS_US).to_dict()
    assert "losses" in account["controller"]

    # When it is checked against the older schema
    # Then it fits
    assert schema_check.body_problems("account", account) == []
    assert sandbox.admin.problems() == []
