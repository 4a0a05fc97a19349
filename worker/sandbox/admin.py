"""Test-only admin routes under `/_sandbox/`: no Stripe auth, never expose them.

Besides state, faults, clock and reset, tests make Stripe's records differ from what the
worker's ledger knows: charges made at Stripe directly, altered or removed, and whole days
of charges generated in bulk.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from worker.sandbox import objects
from worker.sandbox.api import SANDBOX
from worker.sandbox.bulk import BulkDay
from worker.sandbox.charges import Alteration, DirectCharge, PrefixTaken
from worker.sandbox.errors import StripeError
from worker.sandbox.faults import Faults
from worker.sandbox.seed import AccountSeed

_Body = TypeVar("_Body", bound=BaseModel)


class ClockAdvance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    advance_seconds: float = Field(ge=0)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def _read(request: web.Request, model: type[_Body]) -> _Body:
    """The request's JSON body as `model`; a body that is not one is answered 400."""
    try:
        text = await request.text()
        return model.model_validate(json.loads(text) if text.strip() else {})
    except ValueError as exc:  # as are pydantic's ValidationError and JSONDecodeError
        raise _bad_request(str(exc)) from None


def _bad_request(message: str, **details: Any) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message, **details}), content_type="application/json"
    )


def _not_found(ident: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=json.dumps({"error": f"no such charge: {ident}"}), content_type="application/json"
    )


async def health(request: web.Request) -> web.Response:
    return _json({"ok": True, "platform": request.app[SANDBOX].ledger.platform.id})


async def state(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX].snapshot())


async def counts(request: web.Request) -> web.Response:
    """The request and fault counts alone: `state` lists every payment, which after a long
    run takes longer than a caller polling the counts can wait."""
    sandbox = request.app[SANDBOX]
    return _json(
        {"requests": dict(sandbox.requests), "faults_injected": dict(sandbox.injector.injected)}
    )


async def check(request: web.Request) -> web.Response:
    problems = request.app[SANDBOX].ledger.problems()
    return _json({"ok": not problems, "problems": problems})


async def get_faults(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX].injector.faults.model_dump(mode="json"))


async def set_faults(request: web.Request) -> web.Response:
    faults = await _read(request, Faults)
    request.app[SANDBOX].injector.configure(faults)
    return _json(faults.model_dump(mode="json"))


async def advance_clock(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    now = sandbox.clock.advance((await _read(request, ClockAdvance)).advance_seconds)
    return _json({"now": now, "offset_seconds": sandbox.clock.offset})


async def reset(request: web.Request) -> web.Response:
    request.app[SANDBOX].reset()
    return _json({"ok": True})


async def put_account(request: web.Request) -> web.Response:
    seed = await _read(request, AccountSeed)
    return _json(objects.account(request.app[SANDBOX].ledger.put_account(seed)))


async def create_charge(request: web.Request) -> web.Response:
    """A debit made at Stripe without the worker: money, charge and event, as the API's."""
    sandbox = request.app[SANDBOX]
    try:
        payment = sandbox.direct_charge(await _read(request, DirectCharge))
    except StripeError as refusal:
        raise _bad_request(refusal.message, code=refusal.code, param=refusal.param) from None
    return _json(sandbox.charges.body(payment.id))


async def alter_charge(request: web.Request) -> web.Response:
    ident = request.match_info["charge"]
    body = request.app[SANDBOX].charges.alter(ident, await _read(request, Alteration))
    if body is None:
        raise _not_found(ident)
    return _json(body)


async def remove_charge(request: web.Request) -> web.Response:
    ident = request.match_info["charge"]
    if not request.app[SANDBOX].remove_charge(ident):
        raise _not_found(ident)
    return _json({"id": ident, "removed": True})


async def generate_day(request: web.Request) -> web.Response:
    spec = await _read(request, BulkDay)
    try:
        day = request.app[SANDBOX].charges.add_day(spec)
    except PrefixTaken as taken:
        raise _bad_request(str(taken)) from None
    last = spec.count - 1
    return _json(
        {
            "count": spec.count,
            "first_id": day.id_at(0),
            "last_id": day.id_at(last),
            "first_created": day.created_at(0),
            "last_created": day.created_at(last),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sandbox/health", health)
    app.router.add_get("/_sandbox/state", state)
    app.router.add_get("/_sandbox/counts", counts)
    app.router.add_get("/_sandbox/check", check)
    app.router.add_get("/_sandbox/faults", get_faults)
    app.router.add_post("/_sandbox/faults", set_faults)
    app.router.add_post("/_sandbox/clock", advance_clock)
    app.router.add_post("/_sandbox/reset", reset)
    app.router.add_post("/_sandbox/accounts", put_account)
    app.router.add_post("/_sandbox/charges", create_charge)
    app.router.add_post("/_sandbox/charges/bulk", generate_day)  # before {charge}
    app.router.add_post("/_sandbox/charges/{charge}", alter_charge)
    app.router.add_delete("/_sandbox/charges/{charge}", remove_charge)
