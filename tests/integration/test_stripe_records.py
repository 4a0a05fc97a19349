"""Stripe's records read back through the gateway, against the sandbox over real HTTP: the
debits the worker made, found in their window by request id and by idempotency key; windows
exact at their bounds; many pages; charges that are not account debits left out.

A sandbox of this module's own, so that charges made here never show in other tests'
windows; the gateway is built as the worker builds it (settings, SDK client, rate budget).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import stripe

from tests.integration.conftest import STRIPE_KEY
from worker.adapters.stripe_gateway import StripeGateway
from worker.bootstrap import rate_budget, stripe_client
from worker.domain.errors import PermanentFailure
from worker.domain.ports import StripeRecords
from worker.domain.types import DebitCharge, Payment, idempotency_key
from worker.sandbox import RunningSandbox, running_sandbox
from worker.settings import load_settings

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"
CUSTOM = "acct_1CustomLegacy000001"
SEEDED_SALES_CREATED = 1_700_000_000  # the default seed's refunded sales (`ch_1Sale…`)


@pytest.fixture(scope="module")
def stripe_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(api_key=STRIPE_KEY) as server:
        yield server


@pytest.fixture
def gateway(stripe_sandbox: RunningSandbox) -> StripeGateway:
    settings = load_settings(
        stripe_api_key=stripe_sandbox.api_key,
        stripe_api_base=stripe_sandbox.url,
        stripe_max_network_retries=0,
    )
    return StripeGateway(stripe_client(settings), rate_budget(settings))


def _debit(gateway: StripeGateway, amount: int) -> tuple[str, Payment]:
    request_id = f"records-{uuid.uuid4().hex[:12]}"
    charge = DebitCharge(request_id, US, amount, "usd", "platform_charge", None, None)
    return request_id, gateway.create_debit(charge)


def _prefix() -> str:
    return f"rec{uuid.uuid4().hex[:8]}"


def test_debits_the_worker_made_are_found_in_their_window_with_their_request_ids(
    gateway: StripeGateway,
) -> None:
    # Given three debits the worker made
    start = datetime.now(UTC) - timedelta(seconds=1)
    made = dict(_debit(gateway, amount) for amount in (101, 202, 303))
    end = datetime.now(UTC) + timedelta(seconds=1)
    records: StripeRecords = gateway

    # When the account debits of their window are read
    seen = {charge.request_id: charge for charge in records.debit_charges(start, end)}

    # Then each is there as the debit answered it, naming its request and account
    assert set(made) <= set(seen)
    for request_id, payment in made.items():
        charge = seen[request_id]
        assert (charge.id, charge.transfer, charge.balance_transaction, charge.created) == (
            payment.id,
            payment.transfer,
            payment.balance_transaction,
            payment.created,
        )
        assert (charge.account, charge.currency, charge.status, charge.paid) == (
            US,
            "usd",
            "succeeded",
            True,
        )
    assert sorted(seen[r].amount for r in made) == [101, 202, 303]


def test_a_charge_is_read_by_id_as_its_debit_left_it(gateway: StripeGateway) -> None:
    # Given a debit the worker made
    request_id, payment = _debit(gateway, 444)

    # When its charge is read by id
    charge = gateway.charge(payment.id)

    # Then it is the debit, with its request id
    assert (charge.id, charge.request_id, charge.amount, charge.account) == (
        payment.id,
        request_id,
        444,
        US,
    )


def test_a_charge_stripe_does_not_have_is_a_permanent_failure(gateway: StripeGateway) -> None:
    # Given / When a charge Stripe never made is read / Then it is permanent, named
    with pytest.raises(PermanentFailure, match="py_1NoSuchCharge0000000001"):
        gateway.charge("py_1NoSuchCharge0000000001")


def test_the_window_includes_its_start_and_excludes_its_end(
    gateway: StripeGateway, stripe_sandbox: RunningSandbox
) -> None:
    # Given charges made at Stripe one second apart, a day ago
    t = int(datetime.now(UTC).timestamp()) - 86_400
    request = f"bounds-{uuid.uuid4().hex[:8]}"
    for offset in range(4):
        stripe_sandbox.admin.create_charge(
            US,
            100 + offset,
            "usd",
            metadata={"request_id": f"{request}-{offset}"},
            created=t + offset,
        )

    # When windows with whole-second and fractional bounds are read
    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    whole = [c.request_id for c in gateway.debit_charges(at(t + 1), at(t + 3))]
    fractional = [c.request_id for c in gateway.debit_charges(at(t + 0.5), at(t + 2.5))]

    # Then a charge at the start is in, one at the end is out, newest first
    assert whole == [f"{request}-2", f"{request}-1"]
    assert fractional == [f"{request}-2", f"{request}-1"]


def test_a_day_of_250_debits_is_read_in_three_pages_newest_first(
    gateway: StripeGateway, stripe_sandbox: RunningSandbox
) -> None:
    # Given 250 debits spread over a past day, made at Stripe in bulk
    prefix = _prefix()
    day = date(2024, 2, 29)
    stripe_sandbox.admin.generate_day(
        day, 250, [US, CUSTOM], amount=700, currency="usd", prefix=prefix
    )
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    before = gateway.list_requests

    # When the day is read
    seen = list(gateway.debit_charges(start, start + timedelta(days=1)))

    # Then every one comes once, newest first, with its request id and account, in 3 pages
    mine = [charge for charge in seen if charge.id.startswith(f"py_{prefix}")]
    assert [charge.id for charge in mine] == [f"py_{prefix}{i:08d}" for i in reversed(range(250))]
    assert [charge.request_id for charge in mine[-2:]] == [f"{prefix}-1", f"{prefix}-0"]
    assert [charge.account for charge in mine[-2:]] == [CUSTOM, US]
    assert mine[-1].created == start
    assert gateway.list_requests - before == 3


def test_charges_that_are_not_account_debits_are_left_out(
    gateway: StripeGateway, stripe_sandbox: RunningSandbox
) -> None:
    # Given the seeded sales (card charges the platform made), listed by Stripe
    window = (
        datetime.fromtimestamp(SEEDED_SALES_CREATED, UTC),
        datetime.fromtimestamp(SEEDED_SALES_CREATED + 1, UTC),
    )
    client = stripe.StripeClient(stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.url})
    listed = client.v1.charges.list(
        params={"created": {"gte": SEEDED_SALES_CREATED, "lt": SEEDED_SALES_CREATED + 1}}
    )
    sales = [charge.id for charge in listed.auto_paging_iter()]
    assert sales, "the sandbox lists no seeded sales to leave out"

    # When the account debits of their window are read
    seen = [charge.id for charge in gateway.debit_charges(*window)]

    # Then none of the sales is among them
    assert not set(sales) & set(seen)


def test_the_event_of_a_debit_is_found_by_the_requests_idempotency_key(
    gateway: StripeGateway,
) -> None:
    # Given a debit the worker made
    start = datetime.now(UTC) - timedelta(seconds=1)
    request_id, payment = _debit(gateway, 555)
    end = datetime.now(UTC) + timedelta(seconds=1)

    # When the charge events of its window are read
    events = list(gateway.charge_events(start, end))

    # Then its event carries the request's idempotency key and names its charge
    [event] = [e for e in events if e.idempotency_key == idempotency_key(request_id)]
    assert (event.charge_id, event.type) == (payment.id, "charge.succeeded")
    assert start <= event.created < end
