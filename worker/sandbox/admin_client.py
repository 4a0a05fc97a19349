"""A small synchronous client for the admin routes, for tests, the demo and benchmarks."""

from __future__ import annotations

import datetime
import json
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from worker.sandbox.bulk import BulkDay
from worker.sandbox.charges import Alteration, DirectCharge
from worker.sandbox.faults import Faults
from worker.sandbox.seed import AccountSeed
from worker.sandbox.state import PaymentStatus


class SandboxCounts(BaseModel):
    """What `GET /_sandbox/counts` reports: `SandboxState`'s counts, cheap at any size."""

    model_config = ConfigDict(frozen=True)

    requests: dict[str, int]
    faults_injected: dict[str, int]


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
    events: int = 0
    late_debits: int = 0  # executed_late debits not carried out yet
    bulk_charges: int = 0
    clock: dict[str, float]

    def available(self, account: str, currency: str) -> int:
        return self.balances[account]["available"].get(currency, 0)


class BulkDayResult(BaseModel):
    """What `POST /_sandbox/charges/bulk` made: `count` charges, first to last."""

    model_config = ConfigDict(frozen=True)

    count: int
    first_id: str
    last_id: str
    first_created: int
    last_created: int


class SandboxAdmin:
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def state(self) -> SandboxState:
        return SandboxState.model_validate(self._call("GET", "/_sandbox/state"))

    def counts(self) -> SandboxCounts:
        """Requests per endpoint and faults injected per kind, without the objects."""
        return SandboxCounts.model_validate(self._call("GET", "/_sandbox/counts"))

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

    def create_charge(
        self,
        account: str,
        amount: int,
        currency: str,
        *,
        metadata: Mapping[str, str] | None = None,
        description: str | None = None,
        created: int | None = None,
        idempotency_key: str | None = None,
        status: PaymentStatus = "succeeded",
    ) -> dict[str, Any]:
        """An account debit made at Stripe without the worker knowing (money moves, its
        event is recorded); returns the charge as GET /v1/charges/{id} renders it."""
        charge = DirectCharge(
            account=account,
            amount=amount,
            currency=currency,
            metadata=dict(metadata or {}),
            description=description,
            created=created,
            idempotency_key=idempotency_key,
            status=status,
        )
        return self._call("POST", "/_sandbox/charges", charge.model_dump(mode="json"))

    def alter_charge(
        self,
        charge_id: str,
        *,
        amount: int | None = None,
        currency: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Make Stripe's answers show another amount, currency or source account for a
        charge (the money moved stays as it was); returns the charge as now answered."""
        change = Alteration(amount=amount, currency=currency, source=source)
        body = change.model_dump(mode="json", exclude_none=True)
        return self._call("POST", f"/_sandbox/charges/{charge_id}", body)

    def remove_charge(self, charge_id: str) -> None:
        """Make Stripe forget a charge and its events: GET answers 404, lists skip it."""
        self._call("DELETE", f"/_sandbox/charges/{charge_id}")

    def generate_day(
        self,
        day: datetime.date | str,
        count: int,
        accounts: Sequence[str],
        *,
        amount: int,
        currency: str,
        prefix: str,
    ) -> BulkDayResult:
        """`count` succeeded account-debit charges spread evenly over one UTC day: charge i
        is `py_{prefix}{i:08d}` with metadata.request_id `{prefix}-{i}` (no money moves,
        no events)."""
        spec = BulkDay.model_validate(
            {
                "day": day,
                "count": count,
                "accounts": tuple(accounts),
                "amount": amount,
                "currency": currency,
                "prefix": prefix,
            }
        )
        body = self._call("POST", "/_sandbox/charges/bulk", spec.model_dump(mode="json"))
        return BulkDayResult.model_validate(body)

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
