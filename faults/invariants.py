"""What must hold after any run, read from the sandbox's own records, the events actually
received, and the ledger:

1. every request has exactly one outcome after deduplication by event id — a DebitSucceeded
   or DebitFailed, or (no event) an escalation to needs_reconciliation in the ledger;
2. no request is lost;
3. no request produced more than one Stripe payment;
4. the sandbox's money adds up (its own invariant check is empty);
5. the ledger agrees with the sandbox: every succeeded row names a payment that exists, for
   the amount asked; every payment belongs to a request the ledger has as succeeded or
   needs_reconciliation; every success event names the ledger's payment;
6. no outcome is guessed: a request that should succeed never fails, and each refusal has
   the code its plan implies.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from worker.adapters.ledger import Ledger
from worker.adapters.ledger.tables import debit_requests, outbox
from worker.sandbox import SandboxState

SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
FAILED = "io.debit-worker.debit.failed.v1"
SETTLED = {"succeeded", "failed", "needs_reconciliation"}
EXPECTED_FAILURE = {
    "valid": set(),
    "low_balance": {"insufficient_balance"},
    "no_consent": {"consent_missing"},
    "invalid": {"invalid_request"},
}
MAY_SUCCEED = {"valid", "low_balance"}


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


def check(  # noqa: PLR0912, PLR0915 - one readable pass over every request
    plan: Plan,
    events: list[dict[str, Any]],
    ledger: Ledger,
    state: SandboxState,
    problems: list[str],
) -> Result:
    result = Result()
    bad = result.violations
    distinct: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for event in events:
        distinct[event["subject"]][event["id"]] = event
    payments: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payment in state.payments:
        payments[payment["metadata"].get("request_id", "?")].append(payment)
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
    outcomes: Counter[str] = Counter()
    planned_ids = {p.request_id for p in plan.requests}
    for planned in plan.requests:
        rid = planned.request_id
        found = list(distinct.get(rid, {}).values())
        row = rows.get(rid)
        paid = payments.get(rid, [])
        if len(paid) > 1:
            bad.append(f"{rid}: {len(paid)} Stripe payments (double debit)")
        if paid and (row is None or row.status not in {"succeeded", "needs_reconciliation"}):
            bad.append(f"{rid}: Stripe has a payment, ledger says {row.status if row else None}")
        if len(found) > 1:
            bad.append(f"{rid}: {len(found)} distinct outcome events {[e['id'] for e in found]}")
            continue
        if not found:
            if row is not None and row.status == "needs_reconciliation":
                outcomes[f"needs_reconciliation ({'payment' if paid else 'no payment'})"] += 1
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
            if code not in EXPECTED_FAILURE[planned.kind]:
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
    bad.extend(f"sandbox: {problem}" for problem in problems)
    result.outcomes = dict(sorted(outcomes.items()))
    return result
