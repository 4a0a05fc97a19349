"""`debit-worker settle`: a person settles a request the reconciler could not, with the charge
they found, or declaring that Stripe never carried it out. Verified against Stripe before
anything is recorded, recorded with its evidence and the operator's name, and answered with
the request's one terminal event, as the reconciler's settlements are."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from schemas.codes import FailureCode
from worker.adapters.ledger import Status
from worker.adapters.ledger.records import RequestRecord
from worker.domain.errors import PermanentFailure
from worker.domain.ports import StripeRecords
from worker.domain.settlement import Failed, StaysOpen, Succeeded, decide
from worker.handlers import Services
from worker.ops.reconciler import (
    LEASE_SECONDS,
    as_unknown,
    charge_evidence,
    charges_for,
    record_settlement,
    unknown_of,
)


class SettleRefused(Exception):
    """Nothing was recorded; the message says why and what to do."""


def settle_with_charge(
    svc: Services, records: StripeRecords, request_id: str, charge_id: str, operator: str
) -> str:
    """Settle with the charge `charge_id` an operator found: it must be this request's debit,
    as asked for, and finished at Stripe."""
    record = _open_request(svc, request_id)
    try:
        charge = records.charge(charge_id)
    except PermanentFailure:
        raise SettleRefused(f"Stripe has no charge {charge_id}; check the id") from None
    if charge.request_id != request_id:
        raise SettleRefused(
            f"charge {charge_id} was made for request {charge.request_id!r}, not {request_id}; "
            "find the charge whose metadata.request_id is this request"
        )
    now = svc.clock()
    verdict = decide(as_unknown(record), [charge], read_until=now, grace=timedelta(0))
    if isinstance(verdict, StaysOpen):
        raise SettleRefused(f"{verdict.reason}; nothing recorded")
    evidence = {
        "method": "operator",
        "read": [f"GET /v1/charges/{charge_id}"],
        "read_at": now.isoformat(),
        "charges": [charge_evidence(charge)],
    }
    return _record(svc, record, verdict, evidence, operator)


def settle_not_executed(
    svc: Services,
    records: StripeRecords,
    request_id: str,
    reason: str,
    operator: str,
    *,
    grace_seconds: float,
) -> str:
    """Settle as `not_executed` once Stripe's records over the request's whole window (its
    attempts plus the grace for a late 500) hold no charge for it."""
    record = _open_request(svc, request_id)
    now = svc.clock()
    evidence: dict[str, Any] = {"method": "operator", "reason": reason, "read_at": now.isoformat()}
    unknown = unknown_of(record)
    if unknown is None:
        evidence["read"] = []
        evidence["why"] = "the ledger holds no idempotency key: Stripe was never called"
    else:
        grace = timedelta(seconds=grace_seconds)
        start, end = unknown.window(grace)
        if now < end:
            raise SettleRefused(
                f"Stripe may still carry out a late attempt of {request_id} until "
                f"{end.isoformat()}; settle it after that"
            )
        found = charges_for(records, [unknown], now, grace).get(request_id, [])
        if found:
            ids = ", ".join(c.id for c in found)
            raise SettleRefused(
                f"Stripe holds {ids} for request {request_id}; settle with --charge instead"
            )
        evidence["read"] = ["GET /v1/events (charge.*)", "GET /v1/charges (created range)"]
        evidence["window"] = {"from": start.isoformat(), "until": end.isoformat()}
        evidence["charges"] = []
    verdict = Failed(
        FailureCode.NOT_EXECUTED,
        f"declared not executed at Stripe by operator {operator}, after checking Stripe's "
        f"records: {reason}",
    )
    return _record(svc, record, verdict, evidence, operator)


def _open_request(svc: Services, request_id: str) -> RequestRecord:
    record = svc.ledger.requests.get(request_id)
    if record is None:
        raise SettleRefused(f"no request {request_id} in the ledger; check the id")
    if record.status is not Status.NEEDS_RECONCILIATION:
        raise SettleRefused(
            f"request {request_id} is {record.status}; only a request in "
            "needs_reconciliation is settled by hand"
        )
    return record


def _record(
    svc: Services,
    record: RequestRecord,
    verdict: Succeeded | Failed,
    evidence: dict[str, Any],
    operator: str,
) -> str:
    actor = f"operator:{operator}"
    reconciliation = svc.ledger.reconciliation
    if reconciliation.take(record.request_id, actor, LEASE_SECONDS) is None:
        raise SettleRefused(
            f"request {record.request_id} is being settled by the reconciler right now; "
            "look at `debit-worker status` in a minute"
        )
    try:
        if not record_settlement(svc, record.request_id, verdict, evidence, actor, actor):
            raise SettleRefused(f"request {record.request_id} was settled meanwhile; nothing done")
    finally:
        reconciliation.release(record.request_id, actor)
    return str(verdict.code) if isinstance(verdict, Failed) else "succeeded"
