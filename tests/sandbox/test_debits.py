"""An account debit through the real SDK: the Payment, the Transfer, the balances."""

from __future__ import annotations

import stripe

from tests.sandbox.helpers import (
    EXPRESS_CA,
    EXPRESS_HK,
    EXPRESS_JP,
    EXPRESS_US,
    LEGACY_CUSTOM,
    PLATFORM,
    REFUND_EUR,
    REFUND_USD,
    SEEDED_USD,
    debit,
)
from worker.sandbox import RunningSandbox


def test_a_debit_returns_a_succeeded_payment_and_moves_the_money_to_the_platform(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given an Express account with $10,000 available
    # When the platform debits $15
    payment = debit(client, "key-1", amount=1_500)

    # Then it gets a succeeded Payment carrying what it sent
    assert payment.object == "charge"
    assert payment.id.startswith("py_")
    assert (payment.amount, payment.amount_captured, payment.currency) == (1_500, 1_500, "usd")
    assert (payment.status, payment.paid, payment.captured, payment.livemode) == (
        "succeeded",
        True,
        True,
        False,
    )
    assert payment.metadata.to_dict() == {"debit_id": "dbt_test_1", "reason": "fee"}
    assert payment.description == "Platform fee for October"
    assert payment.balance_transaction.startswith("txn_")  # type: ignore[union-attr]
    # And the money left the account and reached the platform
    state = sandbox.admin.state()
    assert state.available(EXPRESS_US, "usd") == SEEDED_USD - 1_500
    assert state.available(PLATFORM, "usd") == 1_500


def test_the_payment_names_a_transfer_out_of_the_connected_account(
    client: stripe.StripeClient,
) -> None:
    # Given a debit that succeeded
    payment = debit(client, "key-2", amount=2_000)

    # When the transfer it names is retrieved
    transfer_id = payment.source_transfer
    assert isinstance(transfer_id, str)
    assert transfer_id.startswith("tr_")
    transfer = client.v1.transfers.retrieve(transfer_id)

    # Then it moved the same money to the platform and points back at the payment
    assert (transfer.amount, transfer.currency) == (2_000, "usd")
    assert transfer.destination == PLATFORM
    assert transfer.destination_payment == payment.id
    # And the payment can be read back unchanged
    assert client.v1.charges.retrieve(payment.id).to_dict() == payment.to_dict()


def test_balances_are_list_shaped_and_follow_the_stripe_account_header(
    client: stripe.StripeClient,
) -> None:
    # Given the seeded world
    # When the platform reads its own balance and a connected account's
    platform = client.v1.balance.retrieve()
    japan = client.v1.balance.retrieve(options={"stripe_account": EXPRESS_JP})

    # Then each answers for its own account, per currency
    assert [(a.amount, a.currency) for a in platform.available] == [(0, "usd")]
    assert [(a.amount, a.currency) for a in japan.available] == [(5_000_000, "jpy")]
    assert [(p.amount, p.currency) for p in japan.pending] == [(0, "jpy")]


def test_accounts_describe_who_carries_losses(client: stripe.StripeClient) -> None:
    # Given the platform, an Express account and a legacy Custom account
    # When they are retrieved
    platform = client.v1.accounts.retrieve_current()
    express = client.v1.accounts.retrieve(EXPRESS_US)
    legacy = client.v1.accounts.retrieve(LEGACY_CUSTOM)

    # Then the platform is a US account in usd
    assert (platform.id, platform.country, platform.default_currency) == (PLATFORM, "US", "usd")
    # And the Express account says the platform carries its losses
    assert express.controller is not None
    assert express.controller.to_dict()["losses"] == {"payments": "application"}
    assert (express.type, express.charges_enabled) == ("express", True)
    # And the legacy account has no controller at all, only its type
    assert "controller" not in legacy
    assert legacy.type == "custom"


def test_refunds_are_served_as_seeded(client: stripe.StripeClient) -> None:
    # Given the two seeded refunds
    # When they are retrieved
    usd = client.v1.refunds.retrieve(REFUND_USD)
    eur = client.v1.refunds.retrieve(REFUND_EUR)

    # Then amounts, currencies and status are the seed's
    assert (usd.amount, usd.currency, usd.status) == (5_000, "usd", "succeeded")
    assert (eur.amount, eur.currency) == (5_000, "eur")


def test_domestic_and_corridor_debits_in_each_accounts_own_currency_succeed(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a US platform with accounts in CA (domestic), HK (corridor) and a legacy Custom one
    # When each is debited in its default currency
    debit(client, "ca", source=EXPRESS_CA, currency="cad", amount=100)
    debit(client, "hk", source=EXPRESS_HK, currency="hkd", amount=200)
    debit(client, "legacy", source=LEGACY_CUSTOM, currency="usd", amount=300)

    # Then the platform holds each currency it pulled
    balances = sandbox.admin.state().balances[PLATFORM]["available"]
    assert balances == {"usd": 300, "cad": 100, "hkd": 200}
