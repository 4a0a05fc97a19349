"""`GET /v1/events`: one event per charge an account debit creates, naming the request and
idempotency key that made it; type filters, pagination, and Stripe's 30 days."""

from __future__ import annotations

import urllib.parse
import urllib.request
from typing import Any

import pytest
import stripe

from tests.sandbox.helpers import EXPRESS_US, debit
from worker.sandbox import RunningSandbox

THIRTY_DAYS = 30 * 24 * 3600


def list_events(client: stripe.StripeClient, **params: Any) -> list[dict[str, Any]]:
    page = client.v1.events.list(params=params)  # type: ignore[arg-type]
    return [event.to_dict() for event in page.data]


def test_a_debit_with_an_idempotency_key_leaves_an_event_naming_its_request_and_key(
    client: stripe.StripeClient,
) -> None:
    # Given a debit made through the SDK with an idempotency key
    payment = debit(client, "dbt_evt_1")
    assert payment.last_response is not None

    # When the events are listed
    [event] = list_events(client)

    # Then one charge.succeeded event holds the charge as it was, the request and the key
    assert event["type"] == "charge.succeeded"
    assert event["id"].startswith("evt_")
    assert event["request"] == {
        "id": payment.last_response.request_id,
        "idempotency_key": "dbt_evt_1",
    }
    assert event["data"]["object"] == client.v1.charges.retrieve(payment.id).to_dict()
    assert event["created"] == payment.created
    assert (event["object"], event["livemode"], event["pending_webhooks"]) == ("event", False, 0)
    assert event["api_version"] == "2023-08-16"


def test_a_replayed_debit_leaves_no_second_event(client: stripe.StripeClient) -> None:
    # Given a debit sent twice with the same key
    debit(client, "dbt_evt_2")
    debit(client, "dbt_evt_2")

    # When the events are listed / Then there is one
    assert len(list_events(client)) == 1


def test_a_debit_without_a_key_leaves_an_event_with_a_null_key(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit sent without an idempotency key (the SDK always adds one, so by hand)
    request = urllib.request.Request(
        sandbox.url + "/v1/charges",
        data=urllib.parse.urlencode(
            {"source": EXPRESS_US, "amount": "700", "currency": "usd", "metadata[debit_id]": "d"}
        ).encode(),
        headers={"Authorization": f"Bearer {sandbox.api_key}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        request_id = response.headers["Request-Id"]

    # When the events are listed
    [event] = list_events(client)

    # Then its request has the id but no key
    assert event["request"] == {"id": request_id, "idempotency_key": None}


def test_events_are_typed_by_the_charge_status_and_filtered_by_type_or_types(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a succeeded, a pending and a failed debit
    sandbox.admin.set_faults(charge_answers=("pending", "failed"))
    pending = debit(client, "evt-pending")
    failed = debit(client, "evt-failed")
    succeeded = debit(client, "evt-succeeded")

    # When the events are listed whole and by type
    every = list_events(client)
    by_type = list_events(client, type="charge.pending")
    by_types = list_events(client, types=["charge.failed", "charge.succeeded"])
    by_wildcard = list_events(client, type="charge.*")

    # Then each charge has its type, and the filters keep what they name
    assert [(e["type"], e["data"]["object"]["id"]) for e in every] == [
        ("charge.succeeded", succeeded.id),
        ("charge.failed", failed.id),
        ("charge.pending", pending.id),
    ]
    assert [e["data"]["object"]["id"] for e in by_type] == [pending.id]
    assert [e["data"]["object"]["id"] for e in by_types] == [succeeded.id, failed.id]
    assert by_wildcard == every


def test_type_and_types_together_are_refused(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        list_events(client, type="charge.succeeded", types=["charge.failed"])
    assert refused.value.http_status == 400


def test_events_page_newest_first_with_cursors(client: stripe.StripeClient) -> None:
    # Given five debits
    made = [debit(client, f"evt-page-{n}").id for n in range(5)]

    # When the events are read two at a time, and then before the oldest
    first = client.v1.events.list(params={"limit": 2})
    second = client.v1.events.list(params={"limit": 2, "starting_after": first.data[-1].id})
    oldest = list_events(client, limit=5)[-1]
    newer = list_events(client, limit=2, ending_before=oldest["id"])

    # Then the pages follow the charges, newest first
    assert [e.data.object["id"] for e in first.data] == made[:2:-1]
    assert first.has_more
    assert [e.data.object["id"] for e in second.data] == made[2:0:-1]
    assert [e["data"]["object"]["id"] for e in newer] == [made[2], made[1]]


def test_an_event_is_retrieved_by_id(client: stripe.StripeClient) -> None:
    # Given a debit's event
    debit(client, "evt-get")
    [listed] = list_events(client)

    # When it is retrieved / Then it is the listed one
    assert client.v1.events.retrieve(listed["id"]).to_dict() == listed


def test_events_older_than_thirty_days_are_gone(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit's event
    debit(client, "evt-old")
    [event] = list_events(client)

    # When the sandbox clock passes thirty days
    sandbox.admin.advance_clock(THIRTY_DAYS - 60)
    kept = list_events(client)
    sandbox.admin.advance_clock(61)

    # Then the event is listed until then, and afterwards neither listed nor retrievable
    assert [e["id"] for e in kept] == [event["id"]]
    assert list_events(client) == []
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.events.retrieve(event["id"])
    assert missing.value.http_status == 404
    # And the charge itself is still there
    assert client.v1.charges.retrieve(event["data"]["object"]["id"])


def test_a_connected_account_sees_none_of_the_platforms_events(
    client: stripe.StripeClient,
) -> None:
    # Given a debit's event on the platform
    debit(client, "evt-acct")

    # When a connected account lists events / Then it sees none
    assert client.v1.events.list(options={"stripe_account": EXPRESS_US}).data == []
