"""Stripe's errors sorted by what happens next; the debit sent to Stripe; the facts cache.

Errors are real `stripe` exception instances, built the way the SDK builds them from a
response (json_body with an "error" object, lower-cased headers as the SDK's HTTP clients
hand them over). The gateway itself runs on a real StripeClient whose HTTP client is a
fake transport handed in through `http_client=`: no SDK method is patched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import pytest
import stripe
from pydantic import TypeAdapter

from schemas.codes import FailureCode
from schemas.commands import RequestId
from worker.adapters.facts_cache import CachedStripe
from worker.adapters.rate_budget import Unlimited
from worker.adapters.stripe_gateway import StripeGateway, charge_params, classify
from worker.domain.errors import (
    ChargePending,
    DebitWorkerError,
    KeyInUse,
    OperatorActionNeeded,
    OutcomeUnknown,
    PermanentFailure,
    TransientFailure,
    Unresolvable,
)
from worker.domain.types import IDEMPOTENCY_KEY_PREFIX, DebitCharge, PlatformFacts, idempotency_key

from .fakes import ACCOUNT_ID, FakeClock, FakeMonotonic, FakeStripe, a_refund, an_account

STRIPE_REQUEST_ID = "req_Stripe123"


def _body(error_type: str, code: str | None, message: str = "msg") -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if code is not None:
        error["code"] = code
    return {"error": error}


def _headers(**extra: str) -> dict[str, str]:
    return {"request-id": STRIPE_REQUEST_ID, **{k.replace("_", "-"): v for k, v in extra.items()}}


def invalid_request(
    code: str | None, *, status: int = 400, headers: dict[str, str] | None = None
) -> stripe.InvalidRequestError:
    body = _body("invalid_request_error", code, f"refused: {code}")
    return stripe.InvalidRequestError(  # type: ignore[no-untyped-call]
        f"refused: {code}",
        "source",
        code=code,
        http_body=json.dumps(body),
        http_status=status,
        json_body=body,
        headers=headers if headers is not None else _headers(),
    )


def api_error(status: int) -> stripe.APIError:
    body = _body("api_error", None)
    return stripe.APIError("boom", json.dumps(body), status, body, _headers())


def permission_error(code: str | None) -> stripe.PermissionError:
    body = _body("invalid_request_error", code)
    return stripe.PermissionError("forbidden", json.dumps(body), 403, body, _headers())


def connection_error() -> stripe.APIConnectionError:
    return stripe.APIConnectionError("Network error: ReadTimeout", should_retry=True)  # type: ignore[no-untyped-call]


def classified(err: stripe.StripeError, *, effectful: bool = True) -> DebitWorkerError:
    return classify(err, effectful=effectful)


def permanent(err: stripe.StripeError, *, effectful: bool = True) -> PermanentFailure:
    result = classified(err, effectful=effectful)
    assert isinstance(result, PermanentFailure)
    return result


# --- classify -------------------------------------------------------------------------------


def test_balance_insufficient_is_a_permanent_insufficient_balance() -> None:
    # Given / When Stripe refuses the charge for lack of balance
    result = permanent(invalid_request("balance_insufficient"))

    # Then the debit fails as insufficient_balance, carrying Stripe's details
    assert result.code is FailureCode.INSUFFICIENT_BALANCE
    assert result.stripe_error is not None
    assert (result.stripe_error.code, result.stripe_error.request_id) == (
        "balance_insufficient",
        STRIPE_REQUEST_ID,
    )


@pytest.mark.parametrize("status", [400, 404])
def test_a_missing_resource_is_account_not_found(status: int) -> None:
    # Given / When Stripe says the source account does not exist
    result = permanent(invalid_request("resource_missing", status=status))

    # Then the account is not found
    assert result.code is FailureCode.ACCOUNT_NOT_FOUND


def test_another_invalid_request_is_stripe_rejected_with_stripes_type_code_and_request_id() -> None:
    # Given / When Stripe refuses for a reason the catalogue has no code for
    result = permanent(invalid_request("transfers_not_allowed"))

    # Then it is stripe_rejected and says exactly what Stripe said
    assert result.code is FailureCode.STRIPE_REJECTED
    assert result.stripe_error is not None
    info = result.stripe_error
    assert (info.type, info.code, info.message, info.request_id) == (
        "invalid_request_error",
        "transfers_not_allowed",
        "refused: transfers_not_allowed",
        STRIPE_REQUEST_ID,
    )


def test_a_card_error_is_a_permanent_rejection() -> None:
    # Given / When Stripe answers 402
    body = _body("card_error", "card_declined")
    err = stripe.CardError("declined", None, "card_declined", None, 402, body, _headers())  # type: ignore[no-untyped-call]

    # Then the debit is rejected, with the decline's code
    result = permanent(err)
    assert result.code is FailureCode.STRIPE_REJECTED
    assert result.stripe_error is not None
    assert result.stripe_error.type == "card_error"


@pytest.mark.parametrize("effectful", [True, False])
def test_a_rate_limit_is_transient_and_keeps_stripes_retry_after(effectful: bool) -> None:
    # Given Stripe answers 429 and asks for a 7 s pause
    body = _body("invalid_request_error", "rate_limit")
    err = stripe.RateLimitError("slow down", json.dumps(body), 429, body, _headers(retry_after="7"))

    # When it is classified
    result = classified(err, effectful=effectful)

    # Then it is plainly transient (nothing happened), to be retried no sooner than 7 s
    assert type(result) is TransientFailure
    assert result.retry_after == 7.0


def test_a_rate_limit_with_an_unreadable_retry_after_has_none() -> None:
    # Given a Retry-After that is an HTTP date, not seconds
    err = stripe.RateLimitError(
        "slow down", None, 429, None, _headers(retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    )

    # When / Then it is transient with no pause of its own
    result = classified(err)
    assert isinstance(result, TransientFailure)
    assert result.retry_after is None


def test_no_answer_to_a_charge_is_an_unknown_outcome() -> None:
    # Given / When the connection fails during the charge
    result = classified(connection_error(), effectful=True)

    # Then nobody knows whether money moved
    assert isinstance(result, OutcomeUnknown)


def test_no_answer_to_a_read_is_merely_transient() -> None:
    # Given / When the connection fails during a read
    result = classified(connection_error(), effectful=False)

    # Then it is transient, and not an unknown outcome
    assert type(result) is TransientFailure


@pytest.mark.parametrize("status", [409, 500, 502, 503])
def test_a_conflict_or_server_error_on_a_charge_is_an_unknown_outcome(status: int) -> None:
    # Given / When Stripe answers 409 or 5xx to the charge
    result = classified(api_error(status))

    # Then the outcome is unknown
    assert isinstance(result, OutcomeUnknown)


def test_a_key_still_in_use_on_a_charge_is_a_busy_retry_not_an_unknown_outcome() -> None:
    # Given Stripe answers 409 idempotency_key_in_use: an earlier call with the same key (a
    # lost answer, or a process that stalled past its lease) is still running
    body = _body("invalid_request_error", "idempotency_key_in_use", "another in-progress request")
    err = stripe.APIError(
        "in use", json.dumps(body), 409, body, _headers(stripe_should_retry="true")
    )

    # When it is classified
    result = classified(err)

    # Then it is retried as busy: transient, never a failure, and not an unknown outcome
    assert isinstance(result, KeyInUse)
    assert isinstance(result, TransientFailure)
    assert not isinstance(result, OutcomeUnknown)


def test_a_server_error_on_a_read_is_merely_transient() -> None:
    # Given / When a read gets a 500
    # Then it is transient, not unknown
    assert type(classified(api_error(500), effectful=False)) is TransientFailure


@pytest.mark.parametrize("effectful", [True, False])
def test_an_idempotency_error_is_never_guessed_it_is_an_unknown_outcome(effectful: bool) -> None:
    # Given Stripe says our key was used with other parameters
    body = _body("idempotency_error", None, "Keys for idempotent requests can only be used ...")
    err = stripe.IdempotencyError("reuse", json.dumps(body), 400, body, _headers())

    # When / Then the outcome is unknown
    assert isinstance(classified(err, effectful=effectful), OutcomeUnknown)


def test_a_rejected_api_key_needs_an_operator() -> None:
    # Given / When Stripe answers 401
    body = _body("invalid_request_error", None, "Invalid API Key provided")
    err = stripe.AuthenticationError("bad key", json.dumps(body), 401, body, _headers())

    # Then the operator must act; it is retried, not reported as the debit's failure
    result = classified(err)
    assert isinstance(result, OperatorActionNeeded)
    assert not isinstance(result, OutcomeUnknown)


def test_a_missing_permission_needs_an_operator() -> None:
    # Given / When Stripe answers 403 without an account code
    # Then the operator must act
    assert isinstance(classified(permission_error(None)), OperatorActionNeeded)


def test_a_permission_error_for_an_unconnected_account_is_account_not_found() -> None:
    # Given / When Stripe answers 403 account_invalid (the code only in the error body,
    # as the SDK builds a PermissionError)
    result = permanent(permission_error("account_invalid"))

    # Then the account is not found
    assert result.code is FailureCode.ACCOUNT_NOT_FOUND


def test_stripe_should_retry_true_wins_over_the_status() -> None:
    # Given a 400 that Stripe itself says to retry (e.g. a lock timeout)
    err = invalid_request("lock_timeout", headers=_headers(stripe_should_retry="true"))

    # When / Then the charge is retried as an unknown outcome, a read as transient
    assert isinstance(classified(err, effectful=True), OutcomeUnknown)
    assert type(classified(err, effectful=False)) is TransientFailure


def test_stripe_should_retry_false_leaves_a_refusal_permanent() -> None:
    # Given a refusal Stripe says not to retry
    err = invalid_request("transfers_not_allowed", headers=_headers(stripe_should_retry="false"))

    # When / Then it is permanent
    assert permanent(err).code is FailureCode.STRIPE_REJECTED


# --- idempotency keys and parameters ----------------------------------------------------------


def test_the_idempotency_key_depends_only_on_the_request_id() -> None:
    # Given / When keys are derived twice for one id and once for another
    # Then the same id gives the same key, another id another key
    assert idempotency_key("req-1") == idempotency_key("req-1")
    assert idempotency_key("req-1") != idempotency_key("req-2")
    assert idempotency_key("req-1").startswith(IDEMPOTENCY_KEY_PREFIX)


def test_the_longest_request_id_gives_a_key_stripe_accepts() -> None:
    # Given the longest request_id the schema allows (128 characters)
    longest = TypeAdapter(RequestId).validate_python("a" + "Z9._:-" * 21 + "b")
    assert len(longest) == 128

    # When / Then its key is within Stripe's 255 characters
    assert len(idempotency_key(longest)) <= 255


def a_charge(**changes: Any) -> DebitCharge:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "account": ACCOUNT_ID,
        "amount": 2500,
        "currency": "usd",
        "reason": "refund_recovery",
        "refund": "re_1Refunded",
        "description": None,
        "metadata": {"invoice": "in_42"},
    }
    fields.update(changes)
    return DebitCharge(**fields)


def test_the_charge_names_the_account_as_source_and_its_request_in_metadata() -> None:
    # Given / When a recovery's parameters are built
    params = charge_params(a_charge())

    # Then the account is the source, and metadata carries request, reason and refund
    assert params == {
        "amount": 2500,
        "currency": "usd",
        "source": ACCOUNT_ID,
        "metadata": {
            "invoice": "in_42",
            "request_id": "req-1",
            "reason": "refund_recovery",
            "refund": "re_1Refunded",
        },
    }


def test_a_charge_without_description_or_refund_sends_neither() -> None:
    # Given / When a platform charge without description is built
    params = charge_params(a_charge(reason="platform_charge", refund=None, metadata={}))

    # Then neither key is sent, not even as null
    assert "description" not in params
    assert "refund" not in params["metadata"]


def test_a_description_is_sent_when_given() -> None:
    assert charge_params(a_charge(description="November fees"))["description"] == "November fees"


# --- the gateway on a fake transport --------------------------------------------------------


class FakeTransport(stripe.HTTPClient):
    """Answers the SDK's HTTP requests from a queue, and remembers them."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.requests: list[tuple[str, str, dict[str, str], str]] = []

    def answer(self, status: int, body: dict[str, Any], **headers: str) -> None:
        self.answers.append((status, body, {"request-id": STRIPE_REQUEST_ID, **headers}))

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        self.requests.append((method, url, dict(headers or {}), str(post_data or "")))
        status, body, answer_headers = self.answers.pop(0)
        return json.dumps(body), status, answer_headers

    def close(self) -> None:
        return None


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def gateway(transport: FakeTransport) -> StripeGateway:
    client = stripe.StripeClient("sk_test_fake", http_client=transport, max_network_retries=0)
    return StripeGateway(client, Unlimited())


CHARGE = {
    "id": "py_1Abc",
    "object": "charge",
    "amount": 2500,
    "currency": "usd",
    "created": 1_700_000_000,
    "paid": True,
    "source": {"id": ACCOUNT_ID, "object": "account"},
    "source_transfer": "tr_1Abc",
    "balance_transaction": "txn_1Abc",
    "status": "succeeded",
}


def test_a_debit_is_posted_with_the_requests_idempotency_key_and_read_back(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe creates the payment (a replay of an earlier call)
    transport.answer(200, CHARGE, **{"idempotent-replayed": "true"})

    # When the debit is created
    payment = gateway.create_debit(a_charge())

    # Then one POST /v1/charges carried the request's key and parameters
    [(method, url, headers, form)] = transport.requests
    assert (method, url.split("?")[0]) == ("post", "https://api.stripe.com/v1/charges")
    assert headers["Idempotency-Key"] == idempotency_key("req-1")
    sent = parse_qs(form)
    assert sent["source"] == [ACCOUNT_ID]
    assert sent["metadata[request_id]"] == ["req-1"]
    # And the payment's ids come back
    assert (payment.id, payment.transfer, payment.balance_transaction) == (
        "py_1Abc",
        "tr_1Abc",
        "txn_1Abc",
    )
    assert payment.created.timestamp() == 1_700_000_000
    assert payment.replayed


def test_an_expanded_transfer_still_gives_its_id(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe answers with source_transfer expanded into an object
    transport.answer(200, {**CHARGE, "source_transfer": {"id": "tr_1Abc", "object": "transfer"}})

    # When the debit is created
    payment = gateway.create_debit(a_charge())

    # Then the transfer's id is read from the object
    assert payment.transfer == "tr_1Abc"


def test_a_source_given_as_a_plain_account_id_is_the_account(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe names the source by its id alone
    transport.answer(200, {**CHARGE, "source": ACCOUNT_ID})

    # When the debit is created, Then it is the payment
    assert gateway.create_debit(a_charge()).id == "py_1Abc"


def test_a_pending_charge_is_not_a_payment_but_an_outcome_not_known_yet(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe answers 200 with the charge asked for, still pending
    transport.answer(200, {**CHARGE, "status": "pending", "paid": False})

    # When the debit is created
    # Then no payment comes back: the charge is pending, to be settled by reading it later
    with pytest.raises(ChargePending) as raised:
        gateway.create_debit(a_charge())
    assert raised.value.charge_id == "py_1Abc"
    assert "request req-1" in str(raised.value)
    assert "charge py_1Abc with status 'pending'" in str(raised.value)


NOT_THE_DEBIT_ASKED = {
    "failed": ({"status": "failed", "paid": False}, "status 'failed', not 'succeeded'"),
    "canceled": ({"status": "canceled"}, "status 'canceled', not 'succeeded'"),
    "no-status": ({"status": None}, "status None, not 'succeeded'"),
    "unpaid": ({"paid": False}, "paid False, not true"),
    "other-amount": ({"amount": 2501}, "amount 2501 (asked 2500)"),
    "amount-as-text": ({"amount": "2500"}, "amount '2500' (asked 2500)"),
    "other-currency": ({"currency": "eur"}, "currency 'eur' (asked 'usd')"),
    "other-source": (
        {"source": {"id": "acct_1Other", "object": "account"}},
        "source 'acct_1Other' (asked 'acct_1Debtor')",
    ),
    "source-id-as-text": ({"source": "acct_1Other"}, "source 'acct_1Other' (asked 'acct_1Debtor')"),
    "no-source": ({"source": None}, "source None (asked 'acct_1Debtor')"),
    "pending-for-another-amount": (
        {"status": "pending", "amount": 9999},
        "status 'pending', not 'succeeded'; amount 9999 (asked 2500)",
    ),
}


@pytest.mark.parametrize(
    ("changes", "said"), list(NOT_THE_DEBIT_ASKED.values()), ids=list(NOT_THE_DEBIT_ASKED)
)
def test_a_200_that_is_not_the_succeeded_debit_asked_for_is_escalated_never_a_payment(
    gateway: StripeGateway, transport: FakeTransport, changes: dict[str, Any], said: str
) -> None:
    # Given Stripe answers 200 with a charge that differs from a succeeded debit as asked
    transport.answer(200, {**CHARGE, **changes})

    # When the debit is created
    # Then no payment comes back: the outcome is for an operator to reconcile, and the
    # message names the request, the charge and what differed
    with pytest.raises(Unresolvable) as raised:
        gateway.create_debit(a_charge())
    assert not isinstance(raised.value, ChargePending)
    message = str(raised.value)
    assert "request req-1: Stripe's answer (charge py_1Abc)" in message
    assert said in message


def test_a_refused_debit_raises_the_classified_failure(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe refuses the charge for lack of balance
    transport.answer(400, _body("invalid_request_error", "balance_insufficient"))

    # When / Then the gateway raises insufficient_balance
    with pytest.raises(PermanentFailure) as raised:
        gateway.create_debit(a_charge())
    assert raised.value.code is FailureCode.INSUFFICIENT_BALANCE
    assert raised.value.stripe_error is not None
    assert raised.value.stripe_error.request_id == STRIPE_REQUEST_ID


def test_a_server_error_on_a_debit_is_an_unknown_outcome(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe answers 500 to the charge
    transport.answer(500, _body("api_error", None))

    # When / Then the outcome is unknown
    with pytest.raises(OutcomeUnknown):
        gateway.create_debit(a_charge())


def test_an_account_stripe_rejects_reading_is_not_found(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe refuses to show the account
    transport.answer(404, _body("invalid_request_error", "resource_missing"))

    # When / Then the account is not found
    with pytest.raises(PermanentFailure) as raised:
        gateway.account(ACCOUNT_ID)
    assert raised.value.code is FailureCode.ACCOUNT_NOT_FOUND


def test_an_accounts_facts_are_read_from_stripe(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe knows the account
    transport.answer(
        200,
        {
            "id": ACCOUNT_ID,
            "object": "account",
            "country": "us",
            "default_currency": "USD",
            "type": "none",
            "controller": {"losses": {"payments": "application"}},
        },
    )

    # When its facts are read
    facts = gateway.account(ACCOUNT_ID)

    # Then they are normalised for the policy
    assert (facts.country, facts.default_currency, facts.type, facts.losses_payments) == (
        "US",
        "usd",
        "none",
        "application",
    )


def test_an_unknown_refund_is_refund_not_found(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given Stripe knows no such refund
    transport.answer(404, _body("invalid_request_error", "resource_missing"))

    # When / Then it is refund_not_found
    with pytest.raises(PermanentFailure) as raised:
        gateway.refund("re_1Missing")
    assert raised.value.code is FailureCode.REFUND_NOT_FOUND


def test_a_refund_is_read_with_its_charge_expanded_in_the_same_request(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given a refund of a destination charge made on behalf of an account
    transport.answer(
        200,
        {
            "id": "re_1Refunded",
            "object": "refund",
            "amount": 5000,
            "currency": "USD",
            "status": "pending",
            "charge": {
                "id": "ch_1Sale",
                "object": "charge",
                "transfer_data": {"amount": None, "destination": ACCOUNT_ID},
                "destination": {"id": ACCOUNT_ID, "object": "account"},
                "on_behalf_of": "acct_1Other",
            },
        },
    )

    # When its facts are read
    facts = gateway.refund("re_1Refunded")

    # Then one request asked for the charge expanded, and every account it names is kept
    [(method, url, _, _)] = transport.requests
    assert method == "get"
    assert parse_qs(url.split("?", 1)[1]) == {"expand[0]": ["charge"]}
    assert (facts.amount, facts.currency, facts.status, facts.charge_id) == (
        5000,
        "usd",
        "pending",
        "ch_1Sale",
    )
    assert facts.charge_accounts == (
        ("transfer_data.destination", ACCOUNT_ID),
        ("destination", ACCOUNT_ID),
        ("on_behalf_of", "acct_1Other"),
    )


@pytest.mark.parametrize(
    "charge",
    ["ch_1Sale", {"id": "ch_1Sale", "object": "charge", "transfer_data": None}],
    ids=["not-expanded", "names-no-account"],
)
def test_a_refunded_charge_naming_no_account_gives_no_accounts(
    gateway: StripeGateway, transport: FakeTransport, charge: object
) -> None:
    # Given a refund whose charge names no account (or came back unexpanded)
    transport.answer(
        200,
        {
            "id": "re_1Refunded",
            "object": "refund",
            "amount": 5000,
            "currency": "usd",
            "status": "succeeded",
            "charge": charge,
        },
    )

    # When its facts are read, Then the charge is known and no account is claimed for it
    facts = gateway.refund("re_1Refunded")
    assert (facts.charge_id, facts.charge_accounts) == ("ch_1Sale", ())


def test_the_available_balance_sums_the_currency_on_the_account(
    gateway: StripeGateway, transport: FakeTransport
) -> None:
    # Given the account has usd in two source types, and some eur
    transport.answer(
        200,
        {
            "object": "balance",
            "available": [
                {"amount": 1000, "currency": "usd"},
                {"amount": 500, "currency": "usd"},
                {"amount": 9999, "currency": "eur"},
            ],
            "pending": [],
        },
    )

    # When its usd balance is read
    balance = gateway.available_balance(ACCOUNT_ID, "usd")

    # Then it is the usd sum, read as the connected account
    assert balance == 1500
    assert transport.requests[0][2]["Stripe-Account"] == ACCOUNT_ID


# --- the facts cache ------------------------------------------------------------------------


def _cache(
    inner: FakeStripe, clock: FakeMonotonic, *, max_entries: int = 100, country: str | None = None
) -> CachedStripe:
    return CachedStripe(
        inner, ttl_seconds=60, platform_country=country, max_entries=max_entries, clock=clock
    )


def account_reads(inner: FakeStripe) -> list[str]:
    return [what for kind, what in inner.reads if kind == "account"]


@pytest.fixture
def inner() -> FakeStripe:
    stripe_ = FakeStripe(clock=FakeClock())
    for n in range(3):
        stripe_.add_account(an_account(f"acct_{n}"))
    return stripe_


def test_account_facts_are_answered_from_memory_within_the_ttl(inner: FakeStripe) -> None:
    # Given a cache with a 60 s ttl
    clock = FakeMonotonic()
    cache = _cache(inner, clock)

    # When an account is read three times within 59 s
    first = cache.account("acct_0")
    clock.advance(30)
    cache.account("acct_0")
    clock.advance(29)
    again = cache.account("acct_0")

    # Then Stripe was asked once
    assert account_reads(inner) == ["acct_0"]
    assert again == first


def test_account_facts_are_read_again_after_the_ttl(inner: FakeStripe) -> None:
    # Given facts cached, then changed at Stripe
    clock = FakeMonotonic()
    cache = _cache(inner, clock)
    cache.account("acct_0")
    inner.add_account(an_account("acct_0", losses_payments="stripe"))

    # When the ttl has passed
    clock.advance(60)
    facts = cache.account("acct_0")

    # Then the new facts are read
    assert account_reads(inner) == ["acct_0", "acct_0"]
    assert facts.losses_payments == "stripe"


def test_the_cache_holds_at_most_max_entries_evicting_the_least_recently_used(
    inner: FakeStripe,
) -> None:
    # Given a cache of two accounts holding acct_0 and acct_1, acct_0 used last
    clock = FakeMonotonic()
    cache = _cache(inner, clock, max_entries=2)
    cache.account("acct_0")
    cache.account("acct_1")
    cache.account("acct_0")

    # When a third account is read
    cache.account("acct_2")

    # Then acct_1 was evicted, acct_0 kept
    cache.account("acct_0")
    cache.account("acct_1")
    assert account_reads(inner) == ["acct_0", "acct_1", "acct_2", "acct_1"]


def test_a_failed_account_read_is_not_cached(inner: FakeStripe) -> None:
    # Given Stripe does not know the account at first
    clock = FakeMonotonic()
    cache = _cache(inner, clock)
    with pytest.raises(PermanentFailure):
        cache.account("acct_new")

    # When it appears and is read again
    inner.add_account(an_account("acct_new"))

    # Then it is found
    assert cache.account("acct_new").account_id == "acct_new"


def test_a_configured_platform_country_skips_the_stripe_read(inner: FakeStripe) -> None:
    # Given the platform's country is configured
    cache = _cache(inner, FakeMonotonic(), country="GB")

    # When the platform is asked for
    platform = cache.platform()

    # Then Stripe is not
    assert platform.country == "GB"
    assert [kind for kind, _ in inner.reads] == []


def test_an_unconfigured_platform_is_read_from_stripe_once(inner: FakeStripe) -> None:
    # Given no configured country
    inner.platform_facts = PlatformFacts(account_id="acct_1Platform", country="US")
    cache = _cache(inner, FakeMonotonic())

    # When the platform is asked for twice
    first, second = cache.platform(), cache.platform()

    # Then Stripe was read once
    assert first == second == inner.platform_facts
    assert [kind for kind, _ in inner.reads] == ["platform"]


def test_debits_refunds_and_balances_are_never_cached(inner: FakeStripe) -> None:
    # Given a cache
    cache = _cache(inner, FakeMonotonic())
    inner.add_refund(a_refund("re_1"))

    # When refunds and balances are read twice and two debits are created
    for _ in range(2):
        cache.refund("re_1")
        cache.available_balance("acct_0", "usd")
        cache.create_debit(a_charge(request_id="req-x", account="acct_0"))

    # Then every one reached Stripe
    assert [kind for kind, _ in inner.reads] == ["refund", "balance"] * 2
    assert len(inner.debit_calls) == 2
