"""The Stripe-shaped routes (`/v1/...`) and the front door every one of them passes:
authentication, Stripe-Account, the rate limiters and injected 429s."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import web

from worker.sandbox import errors, objects
from worker.sandbox.core import Sandbox
from worker.sandbox.errors import StripeError
from worker.sandbox.faults import FaultKind, misreport
from worker.sandbox.forms import decode
from worker.sandbox.idempotency import Scope
from worker.sandbox.params import READ_PARAMS, DebitParams, parse_debit, reject_unknown
from worker.sandbox.responses import (
    API_KEY,
    REQUEST_ID,
    ConnectionDropped,
    drop_connection,
    error_response,
    json_response,
    replay,
    stored,
)
from worker.sandbox.state import Account

SANDBOX = web.AppKey("sandbox", Sandbox)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def stripe_front(request: web.Request, handler: Handler) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    sandbox.run_due()  # late debits whose time has come happen before anything reads
    if not request.path.startswith("/v1/"):
        return await handler(request)
    request_id = sandbox.ids.new("req")
    request[REQUEST_ID] = request_id
    resource = request.match_info.route.resource
    endpoint = f"{request.method} {resource.canonical if resource else request.path}"
    sandbox.requests[endpoint] += 1
    try:
        request[API_KEY] = _authenticate(request, sandbox.api_key)
        _account_header(request, sandbox)
        refused = sandbox.injector.admit(endpoint)
        if refused is not None:
            raise errors.rate_limited(refused)
        if sandbox.injector.front_fault(request.method == "POST") == "rate_limit":
            # A 429 at random, not from a limiter: it names none (the header is optional),
            # so a worker's budget does not take a fault share for a limit it exceeded.
            raise errors.rate_limited(None)
        return await handler(request)
    except StripeError as refusal:
        return error_response(refusal, request_id)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return error_response(
            errors.StripeError(
                404,
                errors.INVALID,
                f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            ),
            request_id,
        )
    except ConnectionDropped:
        return web.Response(status=500)  # never reaches the client: the transport is gone


def _authenticate(request: web.Request, expected: str) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    presented = ""
    if scheme.lower() == "bearer":
        presented = credentials.strip()
    elif scheme.lower() == "basic":  # curl -u sk_test_...:
        try:
            presented = base64.b64decode(credentials).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            presented = credentials
    if not presented:
        raise errors.no_api_key()
    if presented != expected:
        raise errors.invalid_api_key(presented)
    return presented


def _account_header(request: web.Request, sandbox: Sandbox) -> Account | None:
    """The account a request acts on: the Stripe-Account header's, or None (the platform)."""
    header = request.headers.get("Stripe-Account")
    if header is None:
        return None
    account = sandbox.ledger.account(header)
    if account is None:
        raise errors.account_invalid(request[API_KEY], header)
    return account


async def _before_read(request: web.Request) -> Sandbox:
    """Query check, execution faults and latency for a GET."""
    _expanded(request)
    return await read_faults(request)


async def read_faults(request: web.Request) -> Sandbox:
    """Execution faults and latency for a GET whose parameters were checked."""
    sandbox = request.app[SANDBOX]
    fault = sandbox.injector.execution_fault(is_write=False)
    await _sleep(sandbox)
    if fault in ("drop_before", "drop_after"):
        raise drop_connection(request)
    if fault == "server_error":
        raise errors.api_error()
    return sandbox


def _expanded(request: web.Request) -> frozenset[str]:
    """The `expand[]` paths asked for; other query parameters are refused."""
    query = decode(request.query.items())
    reject_unknown(query, READ_PARAMS)
    paths = query.get("expand", [])
    listed = paths if isinstance(paths, list) else [paths]
    return frozenset(path for path in listed if isinstance(path, str) and path)


async def _sleep(sandbox: Sandbox) -> None:
    delay = sandbox.injector.latency_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


def _ok(request: web.Request, body: dict[str, object]) -> web.Response:
    return json_response(200, body, request[REQUEST_ID])


def _owned_by(request: web.Request, sandbox: Sandbox, owner: str) -> bool:
    """Objects live on one account; a Stripe-Account header naming another hides them."""
    header = request.headers.get("Stripe-Account")
    return header is None or header in (owner, sandbox.ledger.platform.id)


def _of_acting_account(render: Callable[[Account], dict[str, object]]) -> Handler:
    """A GET of the account the request acts on (Stripe-Account, else the platform)."""

    async def get(request: web.Request) -> web.Response:
        sandbox = await _before_read(request)
        return _ok(request, render(_account_header(request, sandbox) or sandbox.ledger.platform))

    return get


async def get_account(request: web.Request) -> web.Response:
    sandbox = await _before_read(request)
    ident = request.match_info["account"]
    account = sandbox.ledger.account(ident)
    if account is None:
        raise errors.resource_missing("account", ident, param="account", status=404)
    return _ok(request, objects.account(account))


async def get_charge(request: web.Request) -> web.Response:
    sandbox = await _before_read(request)
    ident = request.match_info["charge"]
    body = sandbox.charges.body(ident)
    if body is None or not _owned_by(request, sandbox, sandbox.ledger.platform.id):
        raise errors.resource_missing("charge", ident, param="id", status=404)
    return _ok(request, body)


async def get_transfer(request: web.Request) -> web.Response:
    sandbox = await _before_read(request)
    ident = request.match_info["transfer"]
    transfer = sandbox.ledger.transfers.get(ident)
    if transfer is None or not _owned_by(request, sandbox, transfer.account):
        raise errors.resource_missing("transfer", ident, param="id", status=404)
    return _ok(request, objects.transfer(transfer))


async def get_refund(request: web.Request) -> web.Response:
    sandbox = await _before_read(request)
    ident = request.match_info["refund"]
    refund = sandbox.ledger.refunds.get(ident)
    if refund is None or not _owned_by(request, sandbox, sandbox.ledger.platform.id):
        raise errors.resource_missing("refund", ident, param="id", status=404)
    charge = None
    if "charge" in _expanded(request) and refund.charge is not None:
        charge = sandbox.charges.body(refund.charge)
    return _ok(request, objects.refund(refund, charge))


async def create_charge(request: web.Request) -> web.Response:
    """An account debit, with Stripe's idempotency and the injected execution faults."""
    sandbox = request.app[SANDBOX]
    request_id = request[REQUEST_ID]
    params = decode(parse_qsl(await request.text(), keep_blank_values=True))
    key = request.headers.get("Idempotency-Key")
    scope: Scope | None = None
    if key is not None:
        scope = (request[API_KEY], request.headers.get("Stripe-Account"), key)
        fingerprint = json.dumps([request.method, request.path, params], sort_keys=True)
        saved = sandbox.idempotency.begin(scope, fingerprint)
        if saved is not None:
            return replay(saved, request_id)
    finished = False
    try:
        debit = parse_debit(params)  # validation failures are not stored under the key
        fault: FaultKind | None = sandbox.injector.execution_fault(is_write=True)
        await _sleep(sandbox)
        if fault == "drop_before":
            raise drop_connection(request)
        if fault == "server_error":
            response = error_response(errors.api_error(), request_id)
        elif fault == "executed_late":
            if _account_header(request, sandbox) in (None, sandbox.ledger.platform):
                sandbox.debit_later(debit, request_id, key)
            response = error_response(errors.api_error(), request_id)
        else:
            response = _execute_debit(request, sandbox, debit, key)
            if fault == "executed_server_error":  # whatever happened, the answer is a 500
                response = error_response(errors.api_error(), request_id)
        if scope is not None:
            sandbox.idempotency.complete(scope, stored(response, request_id))
        finished = True
        if fault == "drop_after":
            raise drop_connection(request)
        return response
    finally:
        if scope is not None and not finished:
            sandbox.idempotency.release(scope)


def _execute_debit(
    request: web.Request, sandbox: Sandbox, debit: DebitParams, key: str | None
) -> web.Response:
    try:
        if _account_header(request, sandbox) not in (None, sandbox.ledger.platform):
            raise errors.invalid(
                "Account debits are made by the platform: send POST /v1/charges with "
                "source=acct_... and without a Stripe-Account header."
            )
        answer = sandbox.injector.charge_answer()
        payment = sandbox.debit(
            debit,
            status=answer if answer in ("pending", "failed") else "succeeded",
            request_id=request[REQUEST_ID],
            idempotency_key=key,
        )
    except StripeError as refusal:
        return error_response(refusal, request[REQUEST_ID])
    sandbox.injector.charge_answered()
    return _ok(request, misreport(objects.payment(payment), answer))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/account", _of_acting_account(objects.account))
    app.router.add_get("/v1/accounts/{account}", get_account)
    app.router.add_get("/v1/balance", _of_acting_account(objects.balance))
    app.router.add_post("/v1/charges", create_charge)
    app.router.add_get("/v1/charges/{charge}", get_charge)
    app.router.add_get("/v1/transfers/{transfer}", get_transfer)
    app.router.add_get("/v1/refunds/{refund}", get_refund)
