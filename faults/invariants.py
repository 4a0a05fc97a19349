"""What must hold after any run, once the books are closed (faults/reconcile.py), read from
the sandbox's own records, the events actually received, and the ledger:

1. every request has exactly one outcome after deduplication by event id — a DebitSucceeded
   or DebitFailed; none is left in needs_reconciliation (one the reconciler found ambiguous
   is a violation too, unless Stripe truly holds two charges: a double debit, below);
2. no request is lost;
3. no request produced more than one Stripe payment;
4. the sandbox's money adds up (its own invariant check is empty), and no debit it was to
   carry out late is still waiting (its records are final);
5. the ledger agrees with the sandbox: every succeeded row names a payment that exists, for
   the amount asked; every payment belongs to a request the ledger has as succeeded; every
   success event names the ledger's payment;
6. no outcome is guessed: a request that should succeed never fails, except `not_executed`
   settled from Stripe's records, and each refusal has the code its plan implies;
7. every settlement matches the sandbox: succeeded ⇔ the sandbox holds exactly that payment
   for the request, and the evidence names it; failed `not_executed` ⇔ it holds none;
8. the daily proof of every day the run touched exits 0 with no unexplained difference.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from faults.reconcile import DayProof
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.tables import debit_requests, outbox, settlements
from worker.sandbox import SandboxState

SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
FAILED = "io.debit-worker.debit.failed.v1"
SETTLED = {"succeeded", "failed", "needs_reconciliation"}
NOT_EXECUTED = "not_executed"
EXPECTED_FAILURE = {
    "valid": set(),
    "low_balance": {"insufficient_balance"},
    "no_consent": {"consent_missing"},
    "invalid": {"invalid_request"},
}
MAY_SUCCEED = {"valid", "low_balance"}
# Kinds whose debit reaches Stripe: an unknown outcome may be settled `not_executed`.
REACH_STRIPE = {"valid", "low_balance"}
SHOWN = 10  # differences named per failed proof


@dataclass(frozen=True)
class PlannedRequest:
    request_id: str
    kind: str  # valid | low_balance | no_consent | invalid
    body: dict[str, Any]
    duplicate: bool = False


@dataclass
class Plan:
    requests: list[PlannedRequest]

    def unsettled(self, ledger: Ledger) -> dict[str, int]:
        """Requests without an outcome or an escalation yet, and events not yet published:
        what the drain waits for."""
        with ledger.engine.connect() as conn:
            statuses = dict(
                conn.execute(select(debit_requests.c.request_id, debit_requests.c.status)).all()
            )
            answered = set(conn.execute(select(outbox.c.request_id).distinct()).scalars())
            unsent = conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            ).scalar_one()
        open_: Counter[str] = Counter()
        for planned in self.requests:
            status = statuses.get(planned.request_id)
            if status in SETTLED or (status is None and planned.request_id in answered):
                continue
            open_[status or "not_in_ledger"] += 1
        if unsent:
            open_["unsent_events"] = int(unsent)
        return dict(open_)


@dataclass
class Result:
    outcomes: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SettlementRow:
    request_id: str
    outcome: str
    method: str
    evidence: dict[str, Any]
    status: str
    payment_id: str | None
    failure_code: str | None


def check(  # noqa: PLR0912, PLR0915, PLR0917 - one readable pass over every request
    plan: Plan,
    events: list[dict[str, Any]],
    ledger: Ledger,
    state: SandboxState,
    problems: list[str],
    left_open: Mapping[str, str],
    proofs: list[DayProof],
) -> Result:
    """`left_open`: why each request still in needs_reconciliation was left so by the last
    reconciliation round; `proofs`: the daily proofs run after it."""
    result = Result()
    bad = result.violations
    distinct: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for event in events:
        distinct[event["subject"]][event["id"]] = event
    payments = payments_by_request(state)
    with ledger.engine.connect() as conn:
        rows = {
            row.request_id: row
            for row in conn.execute(
                select(
                    debit_requests.c.request_id,
                    debit_requests.c.status,
                    debit_requests.c.payment_id,
                    debit_requests.c.amount,
                )
            )
        }
    settled = settlement_rows(ledger)
    outcomes: Counter[str] = Counter()
    planned_ids = {p.request_id for p in plan.requests}
    for planned in plan.requests:
        rid = planned.request_id
        found = list(distinct.get(rid, {}).values())
        row = rows.get(rid)
        paid = payments.get(rid, [])
        if len(paid) > 1:
            bad.append(f"{rid}: {len(paid)} Stripe payments (double debit)")
        if paid and (row is None or row.status != "succeeded"):
            bad.append(f"{rid}: Stripe has a payment, ledger says {row.status if row else None}")
        if len(found) > 1:
            bad.append(f"{rid}: {len(found)} distinct outcome events {[e['id'] for e in found]}")
            continue
        if not found:
            if row is not None and row.status == "needs_reconciliation":
                outcomes["needs_reconciliation"] += 1
                if len(paid) <= 1:  # two payments: the double debit above says it all
                    why = left_open.get(rid, "not reconciled")
                    bad.append(f"{rid}: still needs_reconciliation after reconciliation ({why})")
            else:
                bad.append(f"{rid}: lost (no event; ledger {row.status if row else 'no row'})")
            continue
        event = found[0]
        if event["type"] == SUCCEEDED:
            outcomes["succeeded"] += 1
            if planned.kind not in MAY_SUCCEED:
                bad.append(f"{rid}: a {planned.kind} request succeeded")
            if row is None or row.status != "succeeded":
                bad.append(f"{rid}: success event, ledger {row.status if row else None}")
            elif row.payment_id != event["data"]["payment"]:
                bad.append(f"{rid}: event payment {event['data']['payment']} != ledger")
            if [p["id"] for p in paid] != [event["data"]["payment"]]:
                bad.append(f"{rid}: event payment not the one Stripe holds")
            elif paid[0]["amount"] != planned.body["amount"]:
                bad.append(f"{rid}: Stripe moved {paid[0]['amount']}, asked {planned.body}")
        else:
            code = event["data"]["code"]
            outcomes[f"failed:{code}"] += 1
            if code == NOT_EXECUTED:
                if planned.kind not in REACH_STRIPE:
                    bad.append(f"{rid}: a {planned.kind} request settled not_executed")
                if rid not in settled:
                    bad.append(f"{rid}: not_executed without a settlement (a guess?)")
            elif code not in EXPECTED_FAILURE[planned.kind]:
                bad.append(f"{rid}: {planned.kind} request failed with {code} (a guess?)")
            if paid:
                bad.append(f"{rid}: failure announced but Stripe holds a payment")
            if row is not None and row.status != "failed":
                bad.append(f"{rid}: failure event, ledger {row.status}")
    for rid in payments:
        if rid not in planned_ids:
            bad.append(f"payment for unknown request {rid}")
    for rid in distinct:
        if rid not in planned_ids:
            bad.append(f"event for unknown request {rid}")
    bad.extend(settlement_violations(settled.values(), payments))
    bad.extend(proof_violations(proofs))
    bad.extend(f"sandbox: {problem}" for problem in problems)
    if state.late_debits:
        bad.append(f"sandbox: {state.late_debits} late debit(s) not carried out yet")
    result.outcomes = dict(sorted(outcomes.items()))
    return result


def payments_by_request(state: SandboxState) -> dict[str, list[dict[str, Any]]]:
    payments: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payment in state.payments:
        payments[payment["metadata"].get("request_id", "?")].append(payment)
    return payments


def settlement_rows(ledger: Ledger) -> dict[str, SettlementRow]:
    s, r = settlements.c, debit_requests.c
    query = select(
        s.request_id, s.outcome, s.method, s.evidence, r.status, r.payment_id, r.failure_code
    ).join(debit_requests, r.request_id == s.request_id, isouter=True)
    with ledger.engine.connect() as conn:
        return {row.request_id: SettlementRow(*row) for row in conn.execute(query)}


def settlement_violations(
    rows: Iterable[SettlementRow], payments: Mapping[str, list[dict[str, Any]]]
) -> list[str]:
    """Each settlement against the sandbox's truth (its payments for the request)."""
    bad: list[str] = []
    for row in rows:
        rid = row.request_id
        paid = [p["id"] for p in payments.get(rid, [])]
        named = [c.get("id") for c in row.evidence.get("charges", [])]
        if row.status != row.outcome:
            bad.append(f"{rid}: settled {row.outcome}, ledger {row.status}")
        if row.outcome == "succeeded":
            if paid != [row.payment_id]:
                bad.append(f"{rid}: settled succeeded with {row.payment_id}, Stripe holds {paid}")
            if named != [row.payment_id]:
                bad.append(f"{rid}: settlement evidence names {named}, ledger {row.payment_id}")
        elif row.failure_code == NOT_EXECUTED:
            if paid:
                bad.append(f"{rid}: settled not_executed, Stripe holds {paid}")
            if named:
                bad.append(f"{rid}: settled not_executed, its evidence names {named}")
        else:
            bad.append(f"{rid}: settled failed {row.failure_code} (Stripe holds {paid})")
    return bad


def proof_violations(proofs: list[DayProof]) -> list[str]:
    bad: list[str] = []
    for proof in proofs:
        if proof.body is None:
            bad.append(f"daily proof of {proof.day}: no proof ({proof.error})")
            continue
        unexplained = [d for d in proof.body["differences"] if not d["explained"]]
        if proof.exit_code != 0 or unexplained:
            shown = [f"{d['kind']} {d['request_id']} {d['charge_id']}" for d in unexplained[:SHOWN]]
            bad.append(
                f"daily proof of {proof.day}: exit {proof.exit_code}, "
                f"{len(unexplained)} unexplained difference(s): {shown}"
            )
    return bad
