"""A small synchronous client for the admin routes, for tests, the demo and benchmarks."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from pydantic import BaseModel, ConfigDict

from worker.sandbox.faults import Faults
from worker.sandbox.seed import AccountSeed


class SandboxState(BaseModel):
    """What `GET /_sandbox/state` reports."""

    model_config = ConfigDict(frozen=True)

    platform: str
    payments: list[dict[str, Any]]
    transfers: list[dict[str, Any]]
    balances: dict[str, dict[str, dict[str, int]]]
    totals: dict[str, int]
    minted: dict[str, int]
    problems: list[str]
    requests: dict[str, int]
    faults_injected: dict[str, int]
    faults: Faults
    idempotency_keys: int
    clock: dict[str, float]

    def available(self, account: str, currency: str) -> int:
        return self.balances[account]["available"].get(currency, 0)


class SandboxAdmin:
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def state(self) -> SandboxState:
        return SandboxState.model_validate(self._call("GET", "/_sandbox/state"))

    def problems(self) -> list[str]:
        """Broken money invariants; empty when every currency adds up."""
        body = self._call("GET", "/_sandbox/check")
        return [str(problem) for problem in body["problems"]]

    def faults(self) -> Faults:
        return Faults.model_validate(self._call("GET", "/_sandbox/faults"))

    def set_faults(self, faults: Faults | None = None, **fields: Any) -> Faults:
        """Replace the fault configuration: a `Faults`, or its fields as keywords."""
        chosen = faults if faults is not None else Faults(**fields)
        return Faults.model_validate(
            self._call("POST", "/_sandbox/faults", chosen.model_dump(mode="json"))
        )

    def advance_clock(self, seconds: float) -> float:
        """Move the sandbox clock forward; returns its new time (epoch seconds)."""
        body = self._call("POST", "/_sandbox/clock", {"advance_seconds": seconds})
        return float(body["now"])

    def reset(self) -> None:
        self._call("POST", "/_sandbox/reset", {})

    def put_account(self, account: AccountSeed) -> dict[str, Any]:
        """Add or replace a connected account (its balances count as new money)."""
        return self._call("POST", "/_sandbox/accounts", account.model_dump(mode="json"))

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/_sandbox/health").get("ok"))
        except OSError:
            return False

    def _call(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(  # noqa: S310 - our own http:// sandbox
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        # nosec B310 below: self.url is the sandbox's own http:// address, never user input
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 # nosec B310
            body: dict[str, Any] = json.loads(response.read())
        return body
