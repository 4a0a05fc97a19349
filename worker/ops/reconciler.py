"""The reconciler: settles every request whose Stripe outcome is unknown (needs_reconciliation).

- Stripe's own records decide first: its Events carrying the request's idempotency key, and
  its charges list over the window in which the charge could have been created, matched by
  `metadata.request_id` (`worker.domain.settlement.decide`). The reads of all requests of a
  round are merged into as few list reads as their windows allow, each taking a low-priority
  token of the rate budget.
- When the records hold no charge and Stripe still keeps the key, the request is attempted
  once more, by the one attempt path (`handlers.resume`), with the same key: a debit Stripe
  never carried out is carried out now, one it did is answered from the key.
- A charge found settles the request as succeeded (or failed, if the charge failed); none,
  once the window has closed (the last attempt plus a grace for a 500 Stripe carries out
  late), settles it as `not_executed`. Each settlement records its evidence (what was read,
  when, which ids) with the outcome, in the same transaction, and emits the request's one
  terminal event.

A request that never reached Stripe (no key) is not guessed at: it stays for a person
(`debit-worker settle`), as does anything ambiguous, which alerts.

Runs in a background thread of every worker process (`ReconcileStep`) and as `debit-worker
reconcile`; a lease on each request keeps two reconcilers from settling it at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from schemas.commands import DebitRequested
from worker.adapters.ledger import Status, Success
from worker.adapters.ledger.records import RequestRecord
from worker.domain.errors import DebitWorkerError
from worker.domain.ports import StripeRecords
from worker.domain.settlement import (
    CLOCK_SKEW,
    Failed,
    StaysOpen,
    Succeeded,
    Unknown,
    Verdict,
    decide,
)
from worker.domain.types import ChargeSeen
from worker.handlers import Services, failed_outcome, resume, succeeded_outcome
from worker.ops import metrics
from worker.ops.observability import report_reconciliation

log = logging.getLogger(__name__)

ACTOR: Final = "reconciler"
BATCH: Final = 500
LEASE_SECONDS: Final = 300.0
RESENT: Final = "reconcile_resent"  # the audit action of the one resend a request gets


@dataclass
class RoundReport:
    """What one round did, by request id."""

    settled: dict[str, str] = field(default_factory=dict)  # request id → how it ended
    still_open: dict[str, str] = field(default_factory=dict)  # request id → why
    ambiguous: dict[str, str] = field(default_factory=dict)  # request id → why (alerted)
    for_a_person: list[str] = field(default_factory=list)  # never reached Stripe
    list_requests: int = 0


def unknown_of(record: RequestRecord) -> Unknown | None:
    """The request as settlement reads it; None when it never reached Stripe."""
    if record.idempotency_key is None or record.first_attempt_at is None:
        return None
    return as_unknown(record)


def as_unknown(record: RequestRecord) -> Unknown:
    """The request as settlement reads it, also when it never reached Stripe (no key: its
    window starts when it was received)."""
    command = record.command
    return Unknown(
        request_id=record.request_id,
        account=str(command["account"]),
        amount=int(command["amount"]),
        currency=str(command["currency"]),
        idempotency_key=record.idempotency_key or "",
        first_attempt_at=record.first_attempt_at or record.received_at,
        last_attempt_at=record.updated_at,
    )


class Reconciler:
    def __init__(
        self, svc: Services, records: StripeRecords, *, grace_seconds: float, owner: str
    ) -> None:
        self.svc = svc
        self.records = records
        self.grace = timedelta(seconds=grace_seconds)
        self.owner = owner

    def settle_round(self, limit: int = BATCH) -> RoundReport:
        report = RoundReport()
        before = self.records.list_requests
        ledger = self.svc.ledger
        taken: list[Unknown] = []
        try:
            for record in ledger.reconciliation.open_requests(limit):
                unknown = unknown_of(record)
                if unknown is None:
                    report.for_a_person.append(record.request_id)
                elif ledger.reconciliation.take(record.request_id, self.owner, LEASE_SECONDS):
                    taken.append(unknown)  # not taken: another reconciler holds it
            self._settle(taken, report)
        finally:
            for unknown in taken:
                if unknown.request_id not in report.settled:
                    ledger.reconciliation.release(unknown.request_id, self.owner)
            report.list_requests = self.records.list_requests - before
        if report.for_a_person:
            log.warning(
                "reconciler: %d request(s) escalated before reaching Stripe are left to an "
                "operator (debit-worker settle): %s",
                len(report.for_a_person),
                ", ".join(report.for_a_person[:10]),
            )
        return report

    def _settle(self, unknowns: list[Unknown], report: RoundReport) -> None:
        if not unknowns:
            return
        read_until = self.svc.clock()
        found = charges_for(self.records, unknowns, read_until, self.grace)
        for unknown in unknowns:
            charges = found.get(unknown.request_id, [])
            verdict = decide(unknown, charges, read_until=read_until, grace=self.grace)
            if not charges and self._may_resend(unknown):
                if not self._resent(unknown, report):
                    # The resend itself may be carried out late: its window starts now.
                    why = "sent again with its key, outcome still unknown; read again later"
                    report.still_open[unknown.request_id] = why
                continue
            evidence = _evidence(unknown, charges, verdict, read_until, self.grace)
            self._apply(unknown, verdict, evidence, report)

    def _may_resend(self, unknown: Unknown) -> bool:
        """Once per request, while Stripe still keeps its key: a resend of a debit Stripe never
        carried out carries it out now; one it did is answered from the key."""
        age = self.svc.clock() - unknown.first_attempt_at
        if age >= timedelta(seconds=self.svc.config.key_escalation_after_seconds):
            return False
        history = self.svc.ledger.history("request", unknown.request_id)
        return not any(entry.action == RESENT for entry in history)

    def _resent(self, unknown: Unknown, report: RoundReport) -> bool:
        """The same request, the same key, through the one attempt path. True when Stripe's
        answer settled it."""
        evidence = {"method": "resent", "idempotency_key": unknown.idempotency_key}
        self.svc.ledger.reconciliation.add_audit(unknown.request_id, RESENT, ACTOR, evidence)
        try:
            result = resume(unknown.request_id, self.svc, self.owner)
        except DebitWorkerError as still_unknown:  # a stored 500, no answer, pending
            log.info(
                "request %s: sent again with its key, outcome still unknown (%s)",
                unknown.request_id,
                still_unknown,
            )
            return False
        report.settled[unknown.request_id] = f"resent with its key: {result}"
        metrics.reconciler_settled("resent", str(result))
        log.info("request %s settled by sending it again: %s", unknown.request_id, result)
        return True

    def _apply(
        self, unknown: Unknown, verdict: Verdict, evidence: dict[str, Any], report: RoundReport
    ) -> None:
        request_id = unknown.request_id
        if isinstance(verdict, StaysOpen):
            if verdict.ambiguous:
                report.ambiguous[request_id] = verdict.reason
                metrics.reconciler_ambiguous()
                self.svc.ledger.reconciliation.add_audit(
                    request_id, "reconcile_ambiguous", ACTOR, evidence
                )
                report_reconciliation(verdict.reason, request_id=request_id, kind="ambiguous")
                log.error("request %s cannot be settled: %s", request_id, verdict.reason)
            else:
                report.still_open[request_id] = verdict.reason
                log.info("request %s stays open: %s", request_id, verdict.reason)
            return
        if record_settlement(self.svc, request_id, verdict, evidence, ACTOR, self.owner):
            report.settled[request_id] = _said(verdict)
            outcome = "succeeded" if isinstance(verdict, Succeeded) else "failed"
            metrics.reconciler_settled("stripe_records", outcome)
            log.info("request %s settled from Stripe's records: %s", request_id, _said(verdict))


def charges_for(
    records: StripeRecords, unknowns: list[Unknown], read_until: datetime, grace: timedelta
) -> dict[str, list[ChargeSeen]]:
    """Every charge Stripe ties to each request: by an Event with its key, and by
    `metadata.request_id` in the charges list, over the merged windows up to `read_until`."""
    by_key = {u.idempotency_key: u.request_id for u in unknowns}
    wanted = {u.request_id for u in unknowns}
    found: dict[str, dict[str, ChargeSeen]] = defaultdict(dict)
    from_events: dict[str, str] = {}  # charge id → request id
    # Up to our now plus Stripe's possible lead: its `created` is stamped by its clock.
    until = read_until + CLOCK_SKEW
    windows = ((start, min(end, until)) for start, end in (u.window(grace) for u in unknowns))
    for start, end in merge_windows(windows):
        for event in records.charge_events(start, end):
            request_id = by_key.get(event.idempotency_key or "")
            if request_id is not None and event.charge_id is not None:
                from_events[event.charge_id] = request_id
        for charge in records.debit_charges(start, end):
            if charge.request_id in wanted:
                found[charge.request_id][charge.id] = charge
            elif charge.id in from_events:
                found[from_events[charge.id]][charge.id] = charge
    for charge_id, request_id in from_events.items():
        if charge_id not in found[request_id]:  # created outside the window read
            found[request_id][charge_id] = records.charge(charge_id)
    return {request_id: list(charges.values()) for request_id, charges in found.items()}


def record_settlement(  # noqa: PLR0917 - one settlement, each part named
    svc: Services,
    request_id: str,
    verdict: Succeeded | Failed,
    evidence: dict[str, Any],
    actor: str,
    owner: str,
) -> bool:
    """Record the outcome with its evidence and publish its event; False when the request was
    already finished (nothing recorded)."""
    record = svc.ledger.requests.get(request_id)
    if record is None or record.status in {Status.SUCCEEDED, Status.FAILED}:
        return False
    command = DebitRequested.model_validate(record.command)
    source = svc.config.event_source
    requests = svc.ledger.requests
    if isinstance(verdict, Succeeded):
        charge = verdict.charge
        success = Success(
            charge.id, charge.transfer, charge.balance_transaction, charged_at=charge.created
        )
        event = succeeded_outcome(command, success, charge.created, source)
        row_id = requests.record_succeeded(
            request_id, owner, success, event, evidence=evidence, actor=actor
        )
    else:
        at = svc.clock()  # the event's failed_at and the row's finished_at, alike
        event = failed_outcome(command, verdict.code, verdict.message, None, at, source)
        row_id = requests.record_failed(
            request_id,
            owner,
            code=verdict.code,
            message=verdict.message,
            stripe_error=None,
            event=event,
            evidence=evidence,
            actor=actor,
            at=at,
        )
    if row_id is None:
        return False
    svc.outbound.send(row_id, event)
    return True


def merge_windows(
    windows: Iterable[tuple[datetime, datetime]],
) -> list[tuple[datetime, datetime]]:
    """Overlapping [from, until) windows merged, so each moment is read once."""
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def charge_evidence(charge: ChargeSeen) -> dict[str, Any]:
    return {
        "id": charge.id,
        "status": charge.status,
        "paid": charge.paid,
        "amount": charge.amount,
        "currency": charge.currency,
        "account": charge.account,
        "transfer": charge.transfer,
        "created": charge.created.isoformat(),
        "request_id": charge.request_id,
    }


def _evidence(
    unknown: Unknown,
    charges: list[ChargeSeen],
    verdict: Verdict,
    read_until: datetime,
    grace: timedelta,
) -> dict[str, Any]:
    start, end = unknown.window(grace)
    return {
        "method": "stripe_records",
        "read": ["GET /v1/events (charge.*)", "GET /v1/charges (created range)"],
        "window": {"from": start.isoformat(), "until": min(end, read_until).isoformat()},
        "read_at": read_until.isoformat(),
        "idempotency_key": unknown.idempotency_key,
        "charges": [charge_evidence(c) for c in charges],
        "verdict": _said(verdict),
    }


def _said(verdict: Verdict) -> str:
    if isinstance(verdict, Succeeded):
        return f"succeeded: charge {verdict.charge.id}"
    if isinstance(verdict, Failed):
        return f"failed {verdict.code}: {verdict.message}"
    return f"open: {verdict.reason}"
