"""Turning sandbox outcomes into HTTP: JSON bodies, error bodies, replays, lost responses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from worker.sandbox.errors import StripeError
from worker.sandbox.idempotency import StoredResponse

REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", str)


def json_response(
    status: int, body: dict[str, Any], request_id: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Request-Id": request_id, **(headers or {})},
    )


def error_response(error: StripeError, request_id: str) -> web.Response:
    return json_response(error.status, error.body(request_id), request_id, error.headers)


def stored(response: web.Response, request_id: str) -> StoredResponse:
    body = response.body
    assert isinstance(body, bytes)
    extra = {
        name: value
        for name, value in response.headers.items()
        if name.lower() in {"stripe-should-retry", "stripe-rate-limited-reason"}
    }
    return StoredResponse(response.status, body, request_id, extra)


def replay(saved: StoredResponse, request_id: str) -> web.Response:
    return web.Response(
        status=saved.status,
        body=saved.body,
        content_type="application/json",
        headers={
            **saved.headers,
            "Request-Id": request_id,
            "Idempotent-Replayed": "true",
            "Original-Request": saved.request_id,
        },
    )


class ConnectionDropped(Exception):
    """Raised after the transport was aborted: there is no response to send."""


def drop_connection(request: web.Request) -> ConnectionDropped:
    transport = request.transport
    if transport is not None:
        transport.abort()
    return ConnectionDropped()
