"""Refusals: Stripe's status, body and the exception class the SDK raises for each."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import stripe

from tests.sandbox.conftest import ClientFactory
from tests.sandbox.helpers import (
    EXPRESS_JP,
    EXPRESS_US,
    LOW_BALANCE_US,
    PLATFORM,
    STANDARD_US,
    debit,
)
from worker.sandbox import RunningSandbox


def _error(exc: pytest.ExceptionInfo[stripe.StripeError]) -> tuple[int | None, str, str | None]:
    error = exc.value.error
    assert error is not None
    assert exc.value.request_id is not None
    assert exc.value.request_id.startswith("req_")
    return exc.value.http_status, str(error.type), error.code


def test_debiting_more_than_the_available_balance_is_balance_insufficient(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given an account with $5.00 available
    # When the platform debits $5.01
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, source=LOW_BALANCE_US, amount=501)

    # Then Stripe's 400 balance_insufficient comes back and nothing moved
    assert _error(refused) == (400, "invalid_request_error", "balance_insufficient")
    assert refused.value.code == "balance_insufficient"
    assert sandbox.admin.state().available(LOW_BALANCE_US, "usd") == 500


def test_the_whole_available_balance_can_be_debited(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given an account with $5.00 available
    # When exactly $5.00 is debited
    debit(client, source=LOW_BALANCE_US, amount=500)

    # Then it succeeds and leaves zero, never less
    assert sandbox.admin.state().available(LOW_BALANCE_US, "usd") == 0


def test_an_unknown_source_account_is_resource_missing(client: stripe.StripeClient) -> None:
    # Given an account id the sandbox does not know
    # When it is debited
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, source="acct_1DoesNotExist000001")

    # Then it is a 400 resource_missing on `source`
    assert _error(refused) == (400, "invalid_request_error", "resource_missing")
    assert refused.value.param == "source"


def test_debiting_the_platform_itself_is_resource_missing(client: stripe.StripeClient) -> None:
    # Given the platform's own id as the source
    # When it is debited
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, source=PLATFORM)

    # Then it is refused like an unknown source
    assert _error(refused)[2] == "resource_missing"


def test_a_currency_other_than_the_accounts_default_is_refused_on_currency(
    client: stripe.StripeClient,
) -> None:
    # Given a usd account
    # When it is debited in eur
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, currency="eur")

    # Then it is a 400 invalid_request_error naming the currency, without a code
    assert _error(refused) == (400, "invalid_request_error", None)
    assert refused.value.param == "currency"
    assert "default currency 'usd'" in (refused.value.user_message or "")


def test_an_account_whose_losses_stripe_carries_cannot_be_debited(
    client: stripe.StripeClient,
) -> None:
    # Given a Standard account (controller.losses.payments = stripe)
    # When it is debited
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, source=STANDARD_US)

    # Then it is refused on `source`
    assert _error(refused) == (400, "invalid_request_error", None)
    assert refused.value.param == "source"


def test_a_debit_outside_the_platforms_region_and_corridors_is_refused(
    client: stripe.StripeClient,
) -> None:
    # Given a US platform and a JP account (neither domestic nor a corridor)
    # When it is debited in yen
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, source=EXPRESS_JP, currency="jpy", amount=1_000)

    # Then it is refused on `source`
    assert refused.value.param == "source"


def test_more_than_100000_usd_is_amount_too_large(client: stripe.StripeClient) -> None:
    # Given a debit of $100,000.01
    # When it is sent
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, amount=10_000_001)

    # Then it is amount_too_large on `amount`
    assert (refused.value.code, refused.value.param) == ("amount_too_large", "amount")


@pytest.mark.parametrize("missing", ["amount", "currency", "source"])
def test_a_missing_required_parameter_is_parameter_missing(
    client: stripe.StripeClient, missing: str
) -> None:
    # Given debit parameters without one required field
    params = {"amount": 100, "currency": "usd", "source": EXPRESS_US}
    del params[missing]

    # When they are sent
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.charges.create(params=params)  # type: ignore[arg-type]

    # Then the refusal names the missing parameter
    assert (refused.value.code, refused.value.param) == ("parameter_missing", missing)


@pytest.mark.parametrize("amount", ["ten", "1.5", "0", "-100"])
def test_an_amount_that_is_not_a_positive_integer_is_parameter_invalid_integer(
    client: stripe.StripeClient, amount: str
) -> None:
    # Given an amount that is not a positive whole number of minor units
    params = {"amount": amount, "currency": "usd", "source": EXPRESS_US}

    # When it is sent
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.charges.create(params=params)  # type: ignore[arg-type]

    # Then it is parameter_invalid_integer on `amount`
    assert (refused.value.code, refused.value.param) == ("parameter_invalid_integer", "amount")


def test_an_unknown_parameter_is_parameter_unknown(make_client: ClientFactory) -> None:
    # Given a parameter Stripe does not know (sent on purpose, so not checked on the way out)
    client = make_client(check_sent=False)

    # When it is sent
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, colour="blue")

    # Then it is parameter_unknown naming it
    assert (refused.value.code, refused.value.param) == ("parameter_unknown", "colour")


def test_a_wrong_api_key_is_401_with_the_key_redacted(make_client: ClientFactory) -> None:
    # Given a client with a key the sandbox was not started with
    client = make_client(api_key="sk_test_notTheRightKey9876")

    # When it calls the API
    with pytest.raises(stripe.AuthenticationError) as refused:
        client.v1.balance.retrieve()

    # Then Stripe's 401 comes back without revealing the key
    message = refused.value.user_message or ""
    assert refused.value.http_status == 401
    assert message.startswith("Invalid API Key provided: sk_test_")
    assert message.endswith("9876")
    assert "notTheRightKey" not in message


def test_a_request_without_any_key_is_401(sandbox: RunningSandbox) -> None:
    # Given a raw HTTP request without Authorization
    request = urllib.request.Request(sandbox.url + "/v1/balance")

    # When it is sent
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)

    # Then it is 401 with Stripe's error body and a request id
    body = json.loads(refused.value.read())
    assert refused.value.code == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert refused.value.headers["Request-Id"].startswith("req_")


@pytest.mark.parametrize(
    ("kind", "ident"),
    [("accounts", "acct_1Unknown0000000001"), ("charges", "py_1Unknown"), ("refunds", "re_1X")],
)
def test_retrieving_an_unknown_object_is_404_resource_missing(
    client: stripe.StripeClient, kind: str, ident: str
) -> None:
    # Given an id the sandbox does not know
    service = getattr(client.v1, kind)

    # When it is retrieved
    with pytest.raises(stripe.InvalidRequestError) as refused:
        service.retrieve(ident)

    # Then it is 404 resource_missing
    assert _error(refused) == (404, "invalid_request_error", "resource_missing")


def test_an_unknown_stripe_account_header_is_account_invalid(client: stripe.StripeClient) -> None:
    # Given a Stripe-Account header naming no connected account
    # When the balance is read on its behalf
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.balance.retrieve(options={"stripe_account": "acct_1Stranger000000001"})

    # Then it is account_invalid
    assert _error(refused) == (400, "invalid_request_error", "account_invalid")


def test_debiting_on_behalf_of_a_connected_account_is_refused(
    client: stripe.StripeClient,
) -> None:
    # Given a debit sent with a Stripe-Account header
    # When it is sent
    with pytest.raises(stripe.InvalidRequestError) as refused:
        debit(client, stripe_account=EXPRESS_JP)

    # Then the sandbox says debits are the platform's own requests
    assert "platform" in (refused.value.user_message or "")
