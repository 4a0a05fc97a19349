"""The routes for finding a debit again: `GET /v1/charges`, `GET /v1/events` and
`GET /v1/events/{id}`, behind the same front door as the other `/v1/` routes."""

from __future__ import annotations

from aiohttp import web

from worker.sandbox import errors, objects
from worker.sandbox.api import read_faults
from worker.sandbox.core import Sandbox
from worker.sandbox.events import MAX_TYPES, TypeFilter
from worker.sandbox.forms import FormValue, decode
from worker.sandbox.list_params import PAGINATION_PARAMS, paginate, parse_list
from worker.sandbox.params import reject_unknown
from worker.sandbox.responses import REQUEST_ID, json_response

# Known to Stripe's list endpoints, but filters no sandbox object could match usefully.
CHARGE_LIST_UNSUPPORTED = frozenset({"customer", "payment_intent", "transfer_group"})
EVENT_LIST_UNSUPPORTED = frozenset({"delivery_success"})
CHARGE_LIST_PARAMS = PAGINATION_PARAMS | CHARGE_LIST_UNSUPPORTED
EVENT_LIST_PARAMS = PAGINATION_PARAMS | EVENT_LIST_UNSUPPORTED | {"type", "types"}


async def list_charges(request: web.Request) -> web.Response:
    """The platform's charges, newest first; a Stripe-Account header naming a connected
    account sees none (its own charges are not modelled)."""
    query = _query(request, CHARGE_LIST_PARAMS, CHARGE_LIST_UNSUPPORTED)
    params = parse_list(query)
    sandbox = await read_faults(request)
    if _acts_as_platform(request, sandbox):
        data, has_more = sandbox.charges.page(params)
    else:
        paginate(params, [], lambda _: None, lambda _: False, "charge")  # cursors: unknown
        data, has_more = [], False
    return _ok(request, objects.listed("/v1/charges", data, has_more))


async def list_events(request: web.Request) -> web.Response:
    query = _query(request, EVENT_LIST_PARAMS, EVENT_LIST_UNSUPPORTED)
    params = parse_list(query)
    types = _types(query)
    sandbox = await read_faults(request)
    if _acts_as_platform(request, sandbox):
        events, has_more = sandbox.events.page(params, types)
    else:
        paginate(params, [], lambda _: None, lambda _: False, "event")
        events, has_more = [], False
    data = [objects.event(event) for event in events]
    return _ok(request, objects.listed("/v1/events", data, has_more))


async def get_event(request: web.Request) -> web.Response:
    _query(request, frozenset({"expand"}), frozenset())
    sandbox = await read_faults(request)
    ident = request.match_info["event"]
    event = sandbox.events.get(ident)
    if event is None or not _acts_as_platform(request, sandbox):
        raise errors.resource_missing("event", ident, param="id", status=404)
    return _ok(request, objects.event(event))


def _query(
    request: web.Request, known: frozenset[str], unsupported: frozenset[str]
) -> dict[str, FormValue]:
    query = decode(request.query.items())
    reject_unknown(query, known)
    given = sorted(unsupported & set(query))
    if given:
        raise errors.invalid(
            f"The sandbox does not filter lists by '{given[0]}': no sandbox object has one.",
            param=given[0],
        )
    return query


def _types(query: dict[str, FormValue]) -> TypeFilter:
    one, many = query.get("type"), query.get("types")
    if one is not None and many is not None:
        raise errors.invalid(
            "You may only specify one of these parameters: type, types.", param="type"
        )
    if one is not None:
        if not isinstance(one, str):
            raise errors.invalid("Invalid string", param="type")
        return TypeFilter.matching(one)
    if many is None:
        return TypeFilter()
    if not isinstance(many, list) or not all(isinstance(name, str) for name in many):
        raise errors.invalid("Invalid array", param="types")
    if len(many) > MAX_TYPES:
        raise errors.invalid(f"You may pass at most {MAX_TYPES} types.", param="types")
    return TypeFilter(names=frozenset(name for name in many if isinstance(name, str)))


def _acts_as_platform(request: web.Request, sandbox: Sandbox) -> bool:
    return request.headers.get("Stripe-Account") in (None, sandbox.ledger.platform.id)


def _ok(request: web.Request, body: dict[str, object]) -> web.Response:
    return json_response(200, body, request[REQUEST_ID])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/charges", list_charges)
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/v1/events/{event}", get_event)
