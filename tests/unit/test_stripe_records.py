"""Stripe's records read through the gateway: one charge, the account-debit charges and the
charge Events of a window, page by page, each page on a low-priority token.

The gateway runs on a real StripeClient whose HTTP client is a fake Stripe built for these
tests (lists with Stripe's `created`, `limit` and `starting_after` semantics), handed in
through `http_client=`: no SDK method is patched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import stripe

from worker.adapters.rate_budget import Priority
from worker.adapters.stripe_gateway import CHARGE_EVENT_TYPES, RECORD_READ_TRIES, StripeGateway
from worker.domain.errors import PermanentFailure, TransientFailure
from worker.domain.ports import StripeRecords
from worker.domain.types import ChargeSeen, KeyedEvent

T0 = 1_700_000_000  # epoch seconds
ACCOUNT = "acct_1ExpressUS00000001"


def a_debit(number: int, created: int, **changes: Any) -> dict[str, Any]:
    charge: dict[str, Any] = {
        "id": f"py_{number:06d}",
        "object": "charge",
        "amount": 100 + number,
        "currency": "USD",
        "created": created,
        "paid": True,
        "status": "succeeded",
        "source": {"id": ACCOUNT, "object": "account"},
        "source_transfer": f"tr_{number:06d}",
        "balance_transaction": f"txn_{number:06d}",
        "metadata": {"request_id": f"req-{number}"},
    }
    return {**charge, **changes}


def an_event(number: int, created: int, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": f"evt_{number:06d}",
        "object": "event",
        "type": "charge.succeeded",
        "created": created,
        "data": {"object": a_debit(number, created)},
        "request": {"id": f"req_{number}", "idempotency_key": f"debit-worker:v1:req-{number}"},
    }
    return {**event, **changes}


class FakeStripe(stripe.HTTPClient):
    """Stripe's charges and events lists and charge GET over objects held in memory; an
    error answered instead when one is queued. Remembers each request's path and query."""

    name = "fake-stripe"

    def __init__(self) -> None:
        super().__init__()
        self.charges: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.errors: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.requests.append((parts.path, query))
        if self.errors:
            status, body, answer_headers = self.errors.pop(0)
            return json.dumps(body), status, {"request-id": "req_fake", **answer_headers}
        if parts.path == "/v1/charges":
            return self._list(self.charges, query, lambda _: True)
        if parts.path == "/v1/events":
            types = {value for key, value in query.items() if key.startswith("types[")}
            return self._list(self.events, query, lambda event: event["type"] in types)
        ident = parts.path.removeprefix("/v1/charges/")
        for charge in self.charges:
            if charge["id"] == ident:
                return json.dumps(charge), 200, {"request-id": "req_fake"}
        missing = {
            "error": {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "param": "id",
                "message": f"No such charge: '{ident}'",
            }
        }
        return json.dumps(missing), 404, {"request-id": "req_fake"}

    @staticmethod
    def _list(
        objects: list[dict[str, Any]], query: dict[str, str], wanted: Any
    ) -> tuple[str, int, Mapping[str, str]]:
        gte, lt = int(query["created[gte]"]), int(query["created[lt]"])
        found = [o for o in objects if gte <= o["created"] < lt and wanted(o)]
        found.sort(key=lambda o: (o["created"], o["id"]), reverse=True)  # newest first
        after = query.get("starting_after")
        if after is not None:
            found = found[[o["id"] for o in found].index(after) + 1 :]
        limit = int(query.get("limit", "10"))
        body = {"object": "list", "data": found[:limit], "has_more": len(found) > limit}
        return json.dumps(body), 200, {"request-id": "req_fake"}

    def close(self) -> None:
        return None


class CountingBudget:
    """A rate budget that lets everything through and counts which priority was asked for
    (spare: background), and remembers the endpoint classes and what Stripe rate-limited."""

    def __init__(self) -> None:
        self.normal = 0
        self.spare = 0
        self.classes: list[str] = []
        self.limited: list[tuple[str, str | None, float | None]] = []

    def acquire(self, endpoint_class: str, priority: Priority) -> None:
        self.classes.append(endpoint_class)
        if priority >= Priority.BACKGROUND:
            self.spare += 1
        else:
            self.normal += 1

    def rate_limited(
        self, endpoint_class: str, reason: str | None, retry_after: float | None
    ) -> None:
        self.limited.append((endpoint_class, reason, retry_after))


@pytest.fixture
def fake() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
def budget() -> CountingBudget:
    return CountingBudget()


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def gateway(fake: FakeStripe, budget: CountingBudget, slept: list[float]) -> StripeRecords:
    """Typed as the port: mypy checks that the gateway is the reconciliation's records."""
    client = stripe.StripeClient("sk_test_fake", http_client=fake, max_network_retries=0)
    return StripeGateway(client, budget, sleep=slept.append)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_every_debit_of_the_window_is_read_newest_first_a_page_of_100_at_a_time(
    gateway: StripeRecords, fake: FakeStripe, budget: CountingBudget
) -> None:
    # Given 250 account debits, one a second
    fake.charges = [a_debit(n, T0 + n) for n in range(250)]

    # When the debits of the whole window are read
    seen = list(gateway.debit_charges(at(T0), at(T0 + 250)))

    # Then all of them come, newest first, in three pages that each took a spare token
    assert [charge.id for charge in seen] == [f"py_{n:06d}" for n in reversed(range(250))]
    assert gateway.list_requests == 3
    assert (budget.spare, budget.normal) == (3, 0)
    assert budget.classes == ["charge_lists"] * 3
    # And each page asked for 100 created in the window, after the last one already read
    queries = [query for _, query in fake.requests]
    assert [q["limit"] for q in queries] == ["100"] * 3
    assert [q.get("starting_after") for q in queries] == [None, "py_000150", "py_000050"]
    assert {(q["created[gte]"], q["created[lt]"]) for q in queries} == {(str(T0), str(T0 + 250))}


def test_a_debit_is_seen_with_its_account_transfer_and_request(
    gateway: StripeRecords, fake: FakeStripe
) -> None:
    # Given one account debit, with its source as Stripe renders it, and one given by id
    fake.charges = [a_debit(7, T0), a_debit(8, T0 + 1, source=ACCOUNT, metadata={})]

    # When the window is read
    seen = list(gateway.debit_charges(at(T0), at(T0 + 2)))

    # Then each is mapped field by field, the currency lower-case and the time in UTC
    assert seen == [
        ChargeSeen(
            id="py_000008",
            status="succeeded",
            paid=True,
            amount=108,
            currency="usd",
            account=ACCOUNT,
            transfer="tr_000008",
            balance_transaction="txn_000008",
            created=at(T0 + 1),
            request_id=None,
        ),
        ChargeSeen(
            id="py_000007",
            status="succeeded",
            paid=True,
            amount=107,
            currency="usd",
            account=ACCOUNT,
            transfer="tr_000007",
            balance_transaction="txn_000007",
            created=at(T0),
            request_id="req-7",
        ),
    ]


def test_charges_that_are_not_account_debits_are_skipped(
    gateway: StripeRecords, fake: FakeStripe
) -> None:
    # Given a card charge and a sale without a source among account debits
    fake.charges = [
        a_debit(1, T0),
        a_debit(2, T0 + 1, id="ch_card", source={"id": "card_1", "object": "card"}),
        a_debit(3, T0 + 2, id="ch_sale", source=None, source_transfer=None),
        a_debit(4, T0 + 3),
    ]

    # When the window is read
    seen = list(gateway.debit_charges(at(T0), at(T0 + 4)))

    # Then only the account debits come
    assert [charge.id for charge in seen] == ["py_000004", "py_000001"]


def test_the_window_includes_its_start_and_excludes_its_end_to_the_microsecond(
    gateway: StripeRecords, fake: FakeStripe
) -> None:
    # Given debits at whole seconds 100 to 103 past T0
    fake.charges = [a_debit(n, T0 + n) for n in range(100, 104)]

    # When windows with whole and fractional bounds are read
    whole = list(gateway.debit_charges(at(T0 + 101), at(T0 + 103)))
    fractional = list(gateway.debit_charges(at(T0 + 100.7), at(T0 + 102.2)))

    # Then the start is inclusive and the end exclusive, and Stripe was asked for whole
    # seconds covering the window (start floored, end ceiled)
    assert [c.id for c in whole] == ["py_000102", "py_000101"]
    assert [c.id for c in fractional] == ["py_000102", "py_000101"]
    _, query = fake.requests[-1]
    assert (query["created[gte]"], query["created[lt]"]) == (str(T0 + 100), str(T0 + 103))


def test_a_window_in_another_time_zone_is_the_same_instants(
    gateway: StripeRecords, fake: FakeStripe
) -> None:
    # Given a debit, and a window given in UTC+02:00
    fake.charges = [a_debit(1, T0)]
    plus_two = at(T0).astimezone(timezone(timedelta(hours=2)))

    # When the window is read
    seen = list(gateway.debit_charges(plus_two, plus_two + timedelta(seconds=1)))

    # Then it is found
    assert [c.id for c in seen] == ["py_000001"]


def test_a_window_without_a_time_zone_is_refused(gateway: StripeRecords) -> None:
    # Given / When a window of naive datetimes is read / Then it is refused before any call
    with pytest.raises(ValueError, match="time zone"):
        list(gateway.debit_charges(datetime(2026, 1, 1), datetime(2026, 1, 2)))
    assert gateway.list_requests == 0


def test_a_rate_limited_page_is_read_again_after_stripes_retry_after(
    gateway: StripeRecords, fake: FakeStripe, slept: list[float], budget: CountingBudget
) -> None:
    # Given Stripe answers the list with a 429 once (no reason given), then with the page
    fake.charges = [a_debit(1, T0)]
    error = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow"}}
    fake.errors.append((429, error, {"retry-after": "3"}))

    # When the window is read
    seen = list(gateway.debit_charges(at(T0), at(T0 + 10)))

    # Then it waited at least Stripe's retry-after and read the page again
    assert [c.id for c in seen] == ["py_000001"]
    assert len(slept) == 1
    assert slept[0] >= 3
    assert gateway.list_requests == 1
    # And the budget was told, with Stripe's retry-after and no reason
    assert budget.limited == [("charge_lists", None, 3.0)]


def test_a_page_rate_limited_on_every_try_is_transient_with_stripes_retry_after(
    gateway: StripeRecords, fake: FakeStripe, slept: list[float]
) -> None:
    # Given Stripe answers the list with a 429 every time
    error = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow"}}
    fake.errors.extend([(429, error, {"retry-after": "3"})] * RECORD_READ_TRIES)

    # When the window is read / Then after every try the read is transient, with Stripe's wait
    with pytest.raises(TransientFailure) as raised:
        list(gateway.debit_charges(at(T0), at(T0 + 10)))
    assert raised.value.retry_after == 3
    assert len(slept) == RECORD_READ_TRIES - 1
    assert gateway.list_requests == 0


def test_a_charge_is_read_on_a_spare_token(
    gateway: StripeRecords, fake: FakeStripe, budget: CountingBudget
) -> None:
    # Given an account debit at Stripe
    fake.charges = [a_debit(5, T0)]

    # When it is read by id
    seen = gateway.charge("py_000005")

    # Then it is mapped, the read took a spare token, and no list page was counted
    assert (seen.id, seen.account, seen.request_id) == ("py_000005", ACCOUNT, "req-5")
    assert fake.requests[-1][0] == "/v1/charges/py_000005"
    assert (budget.spare, budget.normal, gateway.list_requests) == (1, 0, 0)
    assert budget.classes == ["charge_reads"]


def test_a_charge_stripe_does_not_have_is_a_permanent_failure_naming_it(
    gateway: StripeRecords,
) -> None:
    # Given / When a charge Stripe never made is read / Then it is permanent, named
    with pytest.raises(PermanentFailure, match="Stripe has no charge py_missing"):
        gateway.charge("py_missing")


def test_a_charge_read_left_unanswered_is_transient(
    gateway: StripeRecords, fake: FakeStripe
) -> None:
    # Given Stripe answers with a server error every time
    server_error: tuple[int, dict[str, Any], dict[str, str]] = (
        500,
        {"error": {"type": "api_error", "message": "boom"}},
        {},
    )
    fake.errors.extend([server_error] * RECORD_READ_TRIES)

    # When / Then reading a charge is merely transient: a read moves no money
    with pytest.raises(TransientFailure):
        gateway.charge("py_000001")


def test_charge_events_of_the_window_carry_their_idempotency_keys(
    gateway: StripeRecords, fake: FakeStripe, budget: CountingBudget
) -> None:
    # Given 120 charge events, one raised by Stripe itself, and an event of another kind
    fake.events = [an_event(n, T0 + n) for n in range(120)]
    fake.events[3]["request"] = {"id": None, "idempotency_key": None}
    fake.events.append(an_event(500, T0 + 5, type="payout.paid", data={"object": {}}))

    # When the window's charge events are read
    events = list(gateway.charge_events(at(T0), at(T0 + 120)))

    # Then every charge event comes, newest first, in two pages on spare tokens, asked for
    # by type
    assert len(events) == 120
    assert events[0] == KeyedEvent(
        id="evt_000119",
        type="charge.succeeded",
        created=at(T0 + 119),
        idempotency_key="debit-worker:v1:req-119",
        charge_id="py_000119",
    )
    assert events[-4].idempotency_key is None
    assert (gateway.list_requests, budget.spare) == (2, 2)
    assert budget.classes == ["event_lists"] * 2
    _, query = fake.requests[0]
    assert sorted(v for k, v in query.items() if k.startswith("types[")) == sorted(
        CHARGE_EVENT_TYPES
    )


def test_an_event_about_no_charge_names_no_charge(gateway: StripeRecords, fake: FakeStripe) -> None:
    # Given a charge event whose object is not a charge (an older API version's request id)
    fake.events = [an_event(1, T0, data={"object": {"id": "re_1", "object": "refund"}})]
    fake.events[0]["request"] = "req_old"

    # When it is read
    [event] = gateway.charge_events(at(T0), at(T0 + 1))

    # Then it names neither a charge nor a key
    assert (event.charge_id, event.idempotency_key) == (None, None)
