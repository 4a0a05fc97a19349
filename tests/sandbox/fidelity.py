"""An SDK HTTP client that checks, on the wire, what the tests send and receive.

It is the SDK's own `RequestsClient` doing real HTTP; it only reads each exchange and
records where a request parameter or a response body disagrees with Stripe's OpenAPI
description. The `sandbox` fixture fails a test that saw any disagreement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

from worker.sandbox import schema_check
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
        return []
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
