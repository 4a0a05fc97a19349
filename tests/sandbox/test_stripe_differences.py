"""Admin calls that make Stripe's records differ from the worker's ledger: charges made at
Stripe directly, altered or removed, and whole days of charges generated in bulk."""

from __future__ import annotations

import urllib.error
from typing import Any

import pytest
import stripe

from tests.sandbox.helpers import EXPRESS_CA, EXPRESS_US, LEGACY_CUSTOM, SEEDED_USD, debit
from worker.sandbox import RunningSandbox

DAY_START = 1_767_225_600  # 2026-01-01T00:00:00Z


def list_charges(client: stripe.StripeClient, **params: Any) -> list[stripe.Charge]:
    return client.v1.charges.list(params=params).data  # type: ignore[arg-type]


def test_a_charge_made_at_stripe_directly_is_served_listed_and_has_its_event(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit made at Stripe without the worker, an hour ago
    an_hour_ago = int(sandbox.admin.state().clock["now"]) - 3_600
    made = sandbox.admin.create_charge(
        EXPRESS_US, 1_234, "usd", metadata={"request_id": "req-lost-1"}, created=an_hour_ago
    )

    # When Stripe is asked for it, for the list of that second, and for the events
    served = client.v1.charges.retrieve(made["id"]).to_dict()
    [listed] = list_charges(client, created=an_hour_ago)
    [event] = client.v1.events.list(params={"created": {"gte": an_hour_ago}}).data

    # Then each answer shows the same account debit, and its event has no key
    assert served == made == listed.to_dict()
    assert (made["amount"], made["source"]["id"], made["status"]) == (
        1_234,
        EXPRESS_US,
        "succeeded",
    )
    assert made["metadata"] == {"request_id": "req-lost-1"}
    assert event.created == an_hour_ago
    assert event.request is not None
    assert event.request.idempotency_key is None
    # And the money moved, so the books balance
    assert sandbox.admin.state().available(EXPRESS_US, "usd") == SEEDED_USD - 1_234


def test_a_charge_made_directly_can_name_the_key_its_event_shows(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a direct charge made under an idempotency key
    made = sandbox.admin.create_charge(EXPRESS_US, 500, "usd", idempotency_key="dbt_77")

    # When its event is read / Then it names that key
    [event] = client.v1.events.list().data
    assert event.request is not None
    assert (event.request.idempotency_key, event.data.object["id"]) == ("dbt_77", made["id"])


def test_two_direct_charges_with_one_request_id_look_paid_twice(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the worker's debit and a second charge for the same request at Stripe
    paid = debit(client, "twice", metadata={"request_id": "req-twice"})
    again = sandbox.admin.create_charge(
        EXPRESS_US, 1_500, "usd", metadata={"request_id": "req-twice"}
    )

    # When the charges are listed
    found = [
        c
        for c in list_charges(client, limit=100)
        if c.metadata.to_dict().get("request_id") == "req-twice"
    ]

    # Then both are there
    assert {c.id for c in found} == {paid.id, again["id"]}


def test_a_direct_charge_stripe_would_refuse_is_refused(sandbox: RunningSandbox) -> None:
    # Given a debit in a currency that is not the account's
    # When it is made directly / Then the admin route refuses it, and nothing moved
    with pytest.raises(urllib.error.HTTPError) as refused:
        sandbox.admin.create_charge(EXPRESS_CA, 100, "usd")
    assert refused.value.code == 400
    assert sandbox.admin.state().payments == []


@pytest.mark.parametrize(
    ("change", "field", "shown"),
    [
        ({"amount": 1_499}, "amount", 1_499),
        ({"currency": "eur"}, "currency", "eur"),
        ({"source": LEGACY_CUSTOM}, "source", {"id": LEGACY_CUSTOM, "object": "account"}),
    ],
)
def test_an_altered_charge_shows_the_difference_in_get_and_list_but_not_in_the_ledger(
    sandbox: RunningSandbox,
    client: stripe.StripeClient,
    change: dict[str, Any],
    field: str,
    shown: object,
) -> None:
    # Given a debit of 1500 usd from the Express account
    payment = debit(client, "alter-1")

    # When Stripe's records are altered
    answered = sandbox.admin.alter_charge(payment.id, **change)

    # Then GET and the list show the altered field, and the rest as it was
    served = client.v1.charges.retrieve(payment.id).to_dict()
    [listed] = list_charges(client, created={"gte": payment.created})
    assert served[field] == shown == listed.to_dict()[field] == answered[field]
    assert served["id"] == payment.id
    # And the ledger still holds the truth, so the books balance
    [truth] = sandbox.admin.state().payments
    assert (truth["amount"], truth["currency"]) == (1_500, "usd")


def test_alterations_add_up(sandbox: RunningSandbox, client: stripe.StripeClient) -> None:
    # Given a debit whose amount and then currency are altered
    payment = debit(client, "alter-2")
    sandbox.admin.alter_charge(payment.id, amount=9)
    sandbox.admin.alter_charge(payment.id, currency="cad")

    # When it is read / Then both alterations show
    served = client.v1.charges.retrieve(payment.id)
    assert (served.amount, served.amount_captured, served.currency) == (9, 9, "cad")


def test_a_removed_charge_is_unknown_to_get_the_list_the_events_and_cursors(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given two debits, the first of which Stripe then forgets
    gone = debit(client, "remove-1")
    kept = debit(client, "remove-2")
    sandbox.admin.remove_charge(gone.id)

    # When Stripe is asked for it
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.charges.retrieve(gone.id)
    with pytest.raises(stripe.InvalidRequestError) as bad_cursor:
        list_charges(client, starting_after=gone.id)

    # Then GET answers 404 resource_missing, and it is no cursor either
    assert missing.value.http_status == 404
    assert missing.value.error is not None
    assert missing.value.error.code == "resource_missing"
    assert bad_cursor.value.http_status == 400
    # And the list and the events hold only the other charge
    assert [c.id for c in list_charges(client, created={"gte": gone.created})] == [kept.id]
    assert [e.data.object["id"] for e in client.v1.events.list().data] == [kept.id]
    # And the money it moved stays moved: the ledger keeps both payments
    assert len(sandbox.admin.state().payments) == 2


def test_altering_or_removing_an_unknown_charge_is_a_404(sandbox: RunningSandbox) -> None:
    with pytest.raises(urllib.error.HTTPError) as altered:
        sandbox.admin.alter_charge("py_1Nobody", amount=1)
    with pytest.raises(urllib.error.HTTPError) as removed:
        sandbox.admin.remove_charge("py_1Nobody")
    assert (altered.value.code, removed.value.code) == (404, 404)


def test_a_bulk_day_names_spaces_and_spreads_its_charges_as_specified(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given 1000 charges generated over 2026-01-01 from two accounts
    made = sandbox.admin.generate_day(
        "2026-01-01", 1_000, [EXPRESS_US, LEGACY_CUSTOM], amount=250, currency="usd", prefix="d1"
    )

    # When charges number 0, 1 and 999 are read
    first, second, last = (client.v1.charges.retrieve(f"py_d1{n:08d}") for n in (0, 1, 999))

    # Then each has its id, time, account and request id
    assert (made.count, made.first_id, made.last_id) == (1_000, "py_d100000000", "py_d100000999")
    assert (first.created, second.created, last.created) == (
        DAY_START,
        DAY_START + 86,  # floor(1 * 86400 / 1000)
        DAY_START + 86_313,  # floor(999 * 86400 / 1000)
    )
    sources = [c.to_dict()["source"]["id"] for c in (first, second, last)]
    assert sources == [EXPRESS_US, LEGACY_CUSTOM, LEGACY_CUSTOM]
    assert last.metadata["request_id"] == "d1-999"
    assert (last.amount, last.currency, last.status, last.paid) == (250, "usd", "succeeded", True)
    # And no money moved and no event was recorded
    state = sandbox.admin.state()
    assert (state.bulk_charges, state.events, state.payments) == (1_000, 0, [])
    assert state.available(EXPRESS_US, "usd") == SEEDED_USD


def test_a_bulk_day_is_listed_by_created_range(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given 86400 charges over a day, one a second, and a direct charge inside it
    sandbox.admin.generate_day(
        "2026-01-01", 86_400, [EXPRESS_US], amount=1, currency="usd", prefix="s"
    )
    direct = sandbox.admin.create_charge(EXPRESS_US, 7, "usd", created=DAY_START + 3_600)

    # When the charges of five minutes from 01:00 are walked through, 100 a page
    window = client.v1.charges.list(
        params={"created": {"gte": DAY_START + 3_600, "lt": DAY_START + 3_900}, "limit": 100}
    )
    walked = [charge.id for charge in window.auto_paging_iter()]

    # Then they are those 300 bulk charges and the direct one, newest first (the direct
    # one shares its second with py_s00003600, and was made after it)
    expected = [f"py_s{n:08d}" for n in range(3_899, 3_600, -1)]
    assert walked == [*expected, direct["id"], "py_s00003600"]


def test_bulk_charges_can_be_altered_and_removed(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a bulk day of ten
    sandbox.admin.generate_day(
        "2026-01-01", 10, [EXPRESS_US], amount=100, currency="usd", prefix="ar"
    )

    # When one is altered and another removed
    sandbox.admin.alter_charge("py_ar00000003", amount=101)
    sandbox.admin.remove_charge("py_ar00000005")

    # Then the list shows both differences
    day = list_charges(client, created={"gte": DAY_START, "lt": DAY_START + 86_400})
    assert [c.id for c in day] == [f"py_ar{n:08d}" for n in (9, 8, 7, 6, 4, 3, 2, 1, 0)]
    assert next(c.amount for c in day if c.id == "py_ar00000003") == 101


def test_a_bulk_prefix_that_could_clash_with_an_earlier_one_is_refused(
    sandbox: RunningSandbox,
) -> None:
    # Given a bulk day with prefix "x1"
    sandbox.admin.generate_day("2026-01-01", 5, [EXPRESS_US], amount=1, currency="usd", prefix="x1")

    # When another day uses prefix "x" (py_x100000000 could be either's)
    with pytest.raises(urllib.error.HTTPError) as refused:
        sandbox.admin.generate_day(
            "2026-01-02", 5, [EXPRESS_US], amount=1, currency="usd", prefix="x"
        )

    # Then it is refused
    assert refused.value.code == 400
