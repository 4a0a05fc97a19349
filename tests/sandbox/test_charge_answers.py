"""Account debits Stripe accepts but answers with something other than a succeeded charge of
the money asked for (`Faults.charge_answers`), and refunds in every status, with the charge
they refunded expanded."""

from __future__ import annotations

import pytest
import stripe
from pydantic import ValidationError

from tests.sandbox.helpers import EXPRESS_US, LEGACY_CUSTOM, PLATFORM, SEEDED_USD, debit, replayed
from worker.sandbox import RunningSandbox, Seed
from worker.sandbox.faults import OTHER_SOURCE


def test_a_pending_answer_holds_the_money_in_the_platforms_pending_balance(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next accepted debit is answered pending
    sandbox.admin.set_faults(charge_answers=("pending",))

    # When a debit is sent, and then sent again with the same key
    payment = debit(client, "pending-1", amount=1_500)
    again = debit(client, "pending-1", amount=1_500)

    # Then the charge is pending, not paid, and the replay says the same
    assert (payment.status, payment.paid) == ("pending", False)
    assert replayed(again)
    assert (again.id, again.status) == (payment.id, "pending")
    # And the money left the account for the platform's pending balance, not its available one
    state = sandbox.admin.state()
    assert state.available(EXPRESS_US, "usd") == SEEDED_USD - 1_500
    assert state.balances[PLATFORM]["pending"]["usd"] == 1_500
    assert state.available(PLATFORM, "usd") == 0
    assert client.v1.charges.retrieve(payment.id).status == "pending"
    assert state.faults_injected == {"charge_pending": 1}


def test_a_failed_answer_moves_no_money(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next accepted debit is answered failed
    sandbox.admin.set_faults(charge_answers=("failed",))

    # When a debit is sent
    payment = debit(client, "failed-1")

    # Then Stripe answers 200 with a failed, unpaid charge and no transfer
    assert (payment.status, payment.paid, payment.source_transfer) == ("failed", False, None)
    assert payment.failure_code == "processing_error"
    # And no money moved
    state = sandbox.admin.state()
    assert state.available(EXPRESS_US, "usd") == SEEDED_USD
    assert state.transfers == []


@pytest.mark.parametrize(
    ("answer", "field", "reported"),
    [
        ("other_amount", "amount", 1_501),
        ("other_currency", "currency", "eur"),
        ("other_source", "source", {"id": OTHER_SOURCE, "object": "account"}),
    ],
)
def test_a_misreported_answer_differs_from_the_debit_that_was_made(
    sandbox: RunningSandbox,
    client: stripe.StripeClient,
    answer: str,
    field: str,
    reported: object,
) -> None:
    # Given the next accepted debit's answer misreports one field
    sandbox.admin.set_faults(charge_answers=(answer,))

    # When a debit of 15.00 USD from the Express account is sent
    payment = debit(client, f"{answer}-1", amount=1_500)

    # Then the answer reports a succeeded charge with that field changed
    body = payment.to_dict()
    assert (body["status"], body["paid"], body[field]) == ("succeeded", True, reported)
    # And the debit made, as read back, is the one asked for
    made = client.v1.charges.retrieve(payment.id).to_dict()
    assert (made["amount"], made["currency"], made["source"]["id"]) == (1_500, "usd", EXPRESS_US)


def test_answers_apply_in_order_to_accepted_debits_only(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given two scripted answers
    sandbox.admin.set_faults(charge_answers=("failed", "pending"))

    # When a debit Stripe refuses comes first, then three accepted debits
    with pytest.raises(stripe.InvalidRequestError):
        debit(client, "refused", amount=SEEDED_USD + 1)
    statuses = [debit(client, f"ordered-{n}").status for n in range(3)]

    # Then the refusal used up no answer, and the answers came in order before plain successes
    assert statuses == ["failed", "pending", "succeeded"]


REFUND_STATUSES = {
    "re_1RefundUSD0000000001": "succeeded",
    "re_1RefundPending000001": "pending",
    "re_1RefundFailed0000001": "failed",
    "re_1RefundCanceled00001": "canceled",
    "re_1RefundAction0000001": "requires_action",
}


@pytest.mark.parametrize(("refund_id", "status"), REFUND_STATUSES.items())
def test_the_seed_holds_a_refund_in_every_status_of_a_charge_paid_to_the_express_account(
    client: stripe.StripeClient, refund_id: str, status: str
) -> None:
    # Given / When a seeded refund is read with its charge expanded
    refund = client.v1.refunds.retrieve(refund_id, params={"expand": ["charge"]})

    # Then it has its status, and its charge says it paid the Express account
    assert refund.status == status
    charge = refund.to_dict()["charge"]
    assert charge["object"] == "charge"
    assert charge["transfer_data"]["destination"] == EXPRESS_US
    if status == "failed":
        assert refund.failure_reason == "expired_or_canceled_card"


def test_a_refund_of_a_charge_paid_to_another_account_names_it(
    client: stripe.StripeClient,
) -> None:
    # Given / When the refund of the Custom account's sale is read with its charge expanded
    refund = client.v1.refunds.retrieve("re_1RefundOtherAcct0001", params={"expand": ["charge"]})

    # Then the charge names that account as destination and settlement merchant
    charge = refund.to_dict()["charge"]
    assert charge["transfer_data"]["destination"] == LEGACY_CUSTOM
    assert charge["on_behalf_of"] == LEGACY_CUSTOM


def test_a_refund_read_without_expand_names_its_charge_by_id_and_the_charge_can_be_read(
    client: stripe.StripeClient,
) -> None:
    # Given / When a refund is read without expanding its charge
    refund = client.v1.refunds.retrieve("re_1RefundEUR0000000001")

    # Then the charge is an id, and that charge (a sale of the platform's own) names no account
    assert refund.charge == "ch_1SaleEUR00000000001"
    charge = client.v1.charges.retrieve("ch_1SaleEUR00000000001")
    assert (charge.amount, charge.currency, charge.transfer_data, charge.on_behalf_of) == (
        5_000,
        "eur",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("charges", "problem"),
    [
        ([], "names charge ch_1Sale, which is not under charges"),
        (
            [{"id": "ch_1Sale", "amount": 100, "currency": "eur"}],
            "is in usd but its charge ch_1Sale is in eur",
        ),
    ],
    ids=["charge-not-seeded", "other-currency"],
)
def test_a_seed_refund_must_name_a_seeded_charge_in_its_currency(
    charges: list[dict[str, object]], problem: str
) -> None:
    # Given a seed whose refund names a charge that is missing, or in another currency
    raw = {
        "platform": {"id": PLATFORM, "country": "US", "default_currency": "usd"},
        "charges": charges,
        "refunds": [{"id": "re_1R", "amount": 100, "currency": "usd", "charge": "ch_1Sale"}],
    }

    # When / Then it is refused, saying why
    with pytest.raises(ValidationError, match=problem):
        Seed.model_validate(raw)
