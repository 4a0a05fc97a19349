"""`GET /v1/charges`: newest first, the `created` filter, `limit`, the cursors, and the SDK's
auto-pagination over it."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.sandbox.conftest import ClientFactory
from tests.sandbox.helpers import EXPRESS_US, debit
from worker.sandbox import RunningSandbox

T0 = 1_760_000_000  # the first of five charges made one second apart by `five_charges`


@pytest.fixture
def five_charges(sandbox: RunningSandbox) -> list[str]:
    """Charges created at T0 .. T0+4, oldest first."""
    return [
        sandbox.admin.create_charge(EXPRESS_US, 100 + n, "usd", created=T0 + n)["id"]
        for n in range(5)
    ]


def ids(page: stripe.ListObject[stripe.Charge]) -> list[str]:
    return [charge.id for charge in page.data]


def list_charges(client: stripe.StripeClient, **params: Any) -> stripe.ListObject[stripe.Charge]:
    return client.v1.charges.list(params=params)  # type: ignore[arg-type]


def test_charges_are_listed_newest_first_a_page_at_a_time(
    client: stripe.StripeClient, five_charges: list[str]
) -> None:
    # Given five charges created one second apart
    # When they are listed three at a time
    first = list_charges(client, created={"gte": T0}, limit=3)
    second = list_charges(client, created={"gte": T0}, limit=3, starting_after=first.data[-1].id)

    # Then the first page has the three newest and says more follow; the second the rest
    assert ids(first) == five_charges[:1:-1]
    assert first.has_more
    assert ids(second) == five_charges[1::-1]
    assert not second.has_more
    assert first.url == "/v1/charges"


@pytest.mark.parametrize(
    ("created", "seconds"),
    [
        ({"gt": T0 + 1}, [4, 3, 2]),
        ({"gte": T0 + 1}, [4, 3, 2, 1]),
        ({"lt": T0 + 3, "gte": T0}, [2, 1, 0]),
        ({"lte": T0 + 3, "gte": T0}, [3, 2, 1, 0]),
        ({"gt": T0, "lt": T0 + 4}, [3, 2, 1]),
        (T0 + 2, [2]),
    ],
)
def test_the_created_filter_keeps_the_charges_of_its_range(
    client: stripe.StripeClient,
    five_charges: list[str],
    created: dict[str, int] | int,
    seconds: list[int],
) -> None:
    # Given five charges created at T0 .. T0+4
    # When they are listed with a created filter
    page = list_charges(client, created=created, limit=100)

    # Then exactly those created in its range come, newest first
    assert ids(page) == [five_charges[n] for n in seconds]
    assert [charge.created for charge in page.data] == [T0 + n for n in seconds]


def test_the_page_before_a_cursor_holds_the_charges_just_newer(
    client: stripe.StripeClient, five_charges: list[str]
) -> None:
    # Given five charges
    # When the two charges newer than the oldest are asked for
    page = list_charges(client, created={"gte": T0}, limit=2, ending_before=five_charges[0])

    # Then they come newest first, and newer ones remain
    assert ids(page) == [five_charges[2], five_charges[1]]
    assert page.has_more


def test_the_default_page_holds_ten_and_a_listed_charge_reads_as_its_get(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given twelve debits made through the API
    made = [debit(client, f"list-{n}").id for n in range(12)]

    # When the charges are listed without a limit
    page = client.v1.charges.list()

    # Then ten come, the newest first, each exactly as GET /v1/charges/{id} shows it
    assert ids(page) == made[:1:-1]
    assert page.has_more
    for listed in page.data:
        assert listed.to_dict() == client.v1.charges.retrieve(listed.id).to_dict()
    assert sandbox.admin.state().requests["GET /v1/charges"] == 1


def test_the_seeded_sales_are_listed_with_the_platforms_other_charges(
    client: stripe.StripeClient,
) -> None:
    # Given only the seed's refunded sales
    # When every charge is listed
    page = list_charges(client, limit=100)

    # Then the sales are there, as platform charges are at Stripe
    assert set(ids(page)) == {
        "ch_1SaleUSD00000000001",
        "ch_1SaleEUR00000000001",
        "ch_1SaleUSD00000000002",
        "ch_1SaleOtherAcct00001",
    }


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (0, "This value must be greater than or equal to 1."),
        (101, "This value must be less than or equal to 100."),
    ],
)
def test_a_limit_out_of_range_is_refused_like_stripe(
    client: stripe.StripeClient, limit: int, message: str
) -> None:
    # Given a limit outside 1..100
    # When charges are listed with it
    with pytest.raises(stripe.InvalidRequestError) as refused:
        list_charges(client, limit=limit)

    # Then Stripe's 400 invalid_request_error names the parameter
    assert refused.value.http_status == 400
    assert refused.value.error is not None
    assert (refused.value.error.type, refused.value.error.param) == (
        "invalid_request_error",
        "limit",
    )
    assert refused.value.error.message == message


def test_the_largest_limit_is_accepted(
    client: stripe.StripeClient, five_charges: list[str]
) -> None:
    # Given five charges / When a hundred are asked for / Then all come
    assert len(list_charges(client, created={"gte": T0}, limit=100).data) == len(five_charges)


def test_an_unknown_cursor_is_refused_as_a_missing_charge(client: stripe.StripeClient) -> None:
    # Given no charge py_1Nobody
    # When it is used as a cursor
    with pytest.raises(stripe.InvalidRequestError) as refused:
        list_charges(client, starting_after="py_1Nobody")

    # Then Stripe answers 400 resource_missing for that parameter
    assert refused.value.http_status == 400
    assert refused.value.error is not None
    assert refused.value.error.code == "resource_missing"
    assert refused.value.error.param == "starting_after"
    assert refused.value.error.message == "No such charge: 'py_1Nobody'"


def test_both_cursors_at_once_are_refused(
    client: stripe.StripeClient, five_charges: list[str]
) -> None:
    # Given two charge ids
    # When one is sent as starting_after and the other as ending_before
    with pytest.raises(stripe.InvalidRequestError) as refused:
        list_charges(client, starting_after=five_charges[3], ending_before=five_charges[1])

    # Then Stripe refuses the pair
    assert refused.value.error is not None
    assert refused.value.error.param == "ending_before"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"created": {"after": T0}}, "created[after]"),
        ({"created": {"gte": "soon"}}, "created[gte]"),
        ({"limit": "ten"}, "limit"),
        ({"customer": "cus_1"}, "customer"),
    ],
)
def test_malformed_or_unsupported_list_parameters_are_refused(
    make_client: ClientFactory, params: dict[str, Any], param: str
) -> None:
    # Given a list parameter the sandbox cannot honour
    client = make_client(check_sent=False)

    # When charges are listed with it
    with pytest.raises(stripe.InvalidRequestError) as refused:
        list_charges(client, **params)

    # Then it is a 400 naming that parameter
    assert refused.value.http_status == 400
    assert refused.value.error is not None
    assert refused.value.error.param == param


def test_auto_paging_walks_every_debit_across_pages(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given 130 debits made through the SDK
    start = int(sandbox.admin.state().clock["now"])
    made = [debit(client, f"page-{n}", amount=1).id for n in range(130)]

    # When the SDK auto-pages over a list of 100 a page
    walked = list_charges(client, created={"gte": start}, limit=100).auto_paging_iter()

    # Then it yields every debit once, newest first, in two requests
    assert [charge.id for charge in walked] == made[::-1]
    assert sandbox.admin.state().requests["GET /v1/charges"] == 2


def test_auto_paging_from_ending_before_walks_towards_the_newest(
    client: stripe.StripeClient, five_charges: list[str]
) -> None:
    # Given five charges
    # When the SDK auto-pages, two at a time, from before the oldest
    walked = list_charges(
        client, created={"gte": T0}, limit=2, ending_before=five_charges[0]
    ).auto_paging_iter()

    # Then it yields the four newer ones, oldest first, as the SDK walks backwards
    assert [charge.id for charge in walked] == five_charges[1:]


def test_a_connected_account_sees_none_of_the_platforms_charges(
    client: stripe.StripeClient, five_charges: list[str]
) -> None:
    # Given charges on the platform
    # When a connected account's Stripe-Account header lists charges
    page = client.v1.charges.list(options={"stripe_account": EXPRESS_US})

    # Then none of the platform's charges is among them
    assert page.data == []
    assert not page.has_more
    assert five_charges
