"""Test-only admin routes under `/_sandbox/`: no Stripe auth, never expose them."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from worker.sandbox import objects
from worker.sandbox.api import SANDBOX
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
        raise web.HTTPBadRequest(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None


async def health(request: web.Request) -> web.Response:
    return _json({"ok": True, "platform": request.app[SANDBOX].ledger.platform.id})


async def state(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX].snapshot())


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


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sandbox/health", health)
    app.router.add_get("/_sandbox/state", state)
    app.router.add_get("/_sandbox/check", check)
    app.router.add_get("/_sandbox/faults", get_faults)
    app.router.add_post("/_sandbox/faults", set_faults)
    app.router.add_post("/_sandbox/clock", advance_clock)
    app.router.add_post("/_sandbox/reset", reset)
    app.router.add_post("/_sandbox/accounts", put_account)
