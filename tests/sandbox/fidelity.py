"""An SDK HTTP client that checks, on the wire, what the tests send and receive.

It is the SDK's own `RequestsClient` doing real HTTP; it only reads each exchange and
records where a request parameter or a response body disagrees with Stripe's OpenAPI
description. The `sandbox` fixture fails a test that saw any disagreement.

The 2023-08-16 excerpt has no list or event routes: for those, the envelope (`list`,
`event`) is checked field by field, and every charge in it against the `charge` schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

from worker.sandbox import schema_check
from worker.sandbox.api_lists import CHARGE_LIST_PARAMS, EVENT_LIST_PARAMS
from worker.sandbox.forms import decode

ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"^/v1/account$"), "/v1/account"),
    ("GET", re.compile(r"^/v1/accounts/[^/]+$"), "/v1/accounts/{account}"),
    ("GET", re.compile(r"^/v1/balance$"), "/v1/balance"),
    ("POST", re.compile(r"^/v1/charges$"), "/v1/charges"),
    ("GET", re.compile(r"^/v1/charges/[^/]+$"), "/v1/charges/{charge}"),
    ("GET", re.compile(r"^/v1/refunds/[^/]+$"), "/v1/refunds/{refund}"),
    ("GET", re.compile(r"^/v1/transfers/[^/]+$"), "/v1/transfers/{transfer}"),
)

# Routes outside the excerpt: (pattern, url of the list or None for one event, parameters)
LISTS: tuple[tuple[re.Pattern[str], str | None, frozenset[str]], ...] = (
    (re.compile(r"^/v1/charges$"), "/v1/charges", CHARGE_LIST_PARAMS),
    (re.compile(r"^/v1/events$"), "/v1/events", EVENT_LIST_PARAMS),
    (re.compile(r"^/v1/events/[^/]+$"), None, frozenset({"expand"})),
)
EVENT_FIELDS = {
    "id", "object", "api_version", "created", "data", "livemode", "pending_webhooks",
    "request", "type",
}  # fmt: skip


def spec_path(method: str, path: str) -> str | None:
    for route_method, pattern, template in ROUTES:
        if route_method == method.upper() and pattern.match(path):
            return template
    return None


def exchange_problems(
    method: str, url: str, sent: str | None, status: int, body: bytes, *, check_sent: bool = True
) -> list[str]:
    """What disagrees with the spec in one request/response pair."""
    parts = urlsplit(url)
    template = spec_path(method, parts.path)
    if template is None:
        return _list_problems(method, parts.path, parts.query, status, body, check_sent)
    params = decode(parse_qsl(sent or parts.query, keep_blank_values=True))
    problems = [
        f"{method} {template}: sent unknown parameter {name!r}"
        for name in schema_check.unknown_parameters(template, method, params)
        if check_sent
    ]
    schema = schema_check.response_schema(template, method) if status == 200 else "error"
    problems += [
        f"{method} {template} → {status} ({schema}): {problem}"
        for problem in schema_check.body_problems(schema, json.loads(body))
    ]
    return problems


class SchemaCheckingClient(stripe.RequestsClient):
    def __init__(self, timeout: float = 10.0, *, check_sent: bool = True) -> None:
        super().__init__(timeout=timeout)
        self.check_sent = check_sent
        self.problems: list[str] = []
        self.exchanges = 0

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        content, status, response_headers = super().request(method, url, headers, post_data)
        self.exchanges += 1
        if "Request-Id" not in response_headers:
            self.problems.append(f"{method} {url}: response without Request-Id")
        sent = post_data.decode() if isinstance(post_data, bytes) else post_data
        self.problems += exchange_problems(
            method, url, sent, status, content, check_sent=self.check_sent
        )
        return content, status, response_headers


def _list_problems(
    method: str, path: str, query: str, status: int, body: bytes, check_sent: bool
) -> list[str]:
    route = next((r for r in LISTS if method.upper() == "GET" and r[0].match(path)), None)
    if route is None:
        return []
    _, list_url, known = route
    sent = decode(parse_qsl(query, keep_blank_values=True))
    problems = [
        f"GET {path}: sent unknown parameter {n!r}" for n in sent if check_sent and n not in known
    ]
    answer = json.loads(body)
    if status != 200:
        found = schema_check.body_problems("error", answer)
    elif list_url is None:
        found = _event_problems(answer)
    else:
        found = _envelope_problems(answer, list_url)
    return problems + [f"GET {path} → {status}: {problem}" for problem in found]


def _envelope_problems(answer: dict[str, Any], url: str) -> list[str]:
    shape = {key: type(value).__name__ for key, value in answer.items()}
    if shape != {"object": "str", "data": "list", "has_more": "bool", "url": "str"}:
        return [f"list fields {shape}"]
    if (answer["object"], answer["url"]) != ("list", url):
        return [f"list is {answer['object']!r} at {answer['url']!r}"]
    problems: list[str] = []
    for item in answer["data"]:
        problems += _event_problems(item) if url == "/v1/events" else _charge_problems(item)
    return problems


def _event_problems(event: dict[str, Any]) -> list[str]:
    if set(event) != EVENT_FIELDS or event["object"] != "event":
        return [f"event fields {sorted(event)}"]
    if set(event["request"]) != {"id", "idempotency_key"} or set(event["data"]) != {"object"}:
        return [f"event request {event['request']!r} or data keys {sorted(event['data'])}"]
    return _charge_problems(event["data"]["object"])


def _charge_problems(charge: dict[str, Any]) -> list[str]:
    return [f"{charge.get('id')}: {p}" for p in schema_check.body_problems("charge", charge)]
