"""Closing the books after a fault run, as an operator would: `debit-worker reconcile --json`
in rounds until no request awaits reconciliation (or waiting cannot help), then the daily
proof of each day the run touched (`debit-worker reconcile --day D --json`).

The commands run as subprocesses with the workers' settings, without their crash points (an
operator's command is not part of the chaos). What the ledger then says about every request
that was escalated is read back for the report (`escalations`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select

from faults.services import CLI
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.tables import Status, audit_log, debit_requests, settlements
from worker.ops.crashpoints import ENV as CRASH_POINTS_ENV
from worker.ops.reconciler import RESENT

CLI_TIMEOUT = 180.0  # one round or one day's proof; a hung command counts as an error
PROOF_TRIES = 3  # a proof that fails to read Stripe (faults beyond the SDK's retries) is rerun


@dataclass(frozen=True)
class CliAnswer:
    exit_code: int
    body: dict[str, Any] | None  # the `--json` object; None when the command printed none
    stderr: str

    def error(self) -> str:
        tail = self.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return f"exit {self.exit_code}: {tail[0][:300]}"


@dataclass
class Closing:
    """What the operator's reconciliation rounds did."""

    open_before: int  # requests in needs_reconciliation when the first round started
    rounds: int = 0
    seconds: float = 0.0
    settled: dict[str, str] = field(default_factory=dict)  # by these rounds: request → how
    errors: list[str] = field(default_factory=list)  # rounds that printed no report
    left: dict[str, str] = field(default_factory=dict)  # open after the last: request → why

    def summary(self) -> dict[str, Any]:
        return {
            "needs_reconciliation_before": self.open_before,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 1),
            "settled_by_these_rounds": len(self.settled),
            "round_errors": dict(Counter(self.errors)),
            "left_open_after_rounds": self.left,
        }


@dataclass(frozen=True)
class DayProof:
    day: str
    exit_code: int
    tries: int
    body: dict[str, Any] | None  # ProofRun.as_json(); None when every try failed
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        if self.body is None:
            return {"day": self.day, "exit_code": self.exit_code, "error": self.error}
        counts = ("stripe_charges", "ledger_debits", "matched", "unexplained", "list_requests")
        return {
            "day": self.day,
            "exit_code": self.exit_code,
            "tries": self.tries,
            **{name: self.body[name] for name in counts},
            "differences": len(self.body["differences"]),
        }


def operator_env(worker_env: Mapping[str, str]) -> dict[str, str]:
    """The workers' settings for the operator's commands, without the crash points."""
    env = {**os.environ, **worker_env}
    env.pop(CRASH_POINTS_ENV, None)
    return env


def operator_cli(env: Mapping[str, str], *args: str) -> CliAnswer:
    """`debit-worker ARGS`; its `--json` object is the last line of its standard output."""
    try:
        done = subprocess.run(
            [CLI, *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,  # the exit code is part of the answer
        )
    except subprocess.TimeoutExpired:
        return CliAnswer(-1, None, f"no answer in {CLI_TIMEOUT:.0f} s")
    return CliAnswer(done.returncode, _last_object(done.stdout), done.stderr)


def _last_object(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                return None
            return parsed if isinstance(parsed, dict) else None
    return None


def awaiting(ledger: Ledger) -> set[str]:
    """The requests in needs_reconciliation now."""
    query = select(debit_requests.c.request_id).where(
        debit_requests.c.status == str(Status.NEEDS_RECONCILIATION)
    )
    with ledger.engine.connect() as conn:
        return set(conn.execute(query).scalars())


def reconcile_rounds(
    env: Mapping[str, str], ledger: Ledger, *, timeout: float, pause: float
) -> Closing:
    """`debit-worker reconcile --json` every `pause` seconds until no request awaits
    reconciliation, every one left is one waiting cannot settle (ambiguous, or never sent
    to Stripe: a person's), or `timeout` has passed. A request's window closes at its last
    attempt + the grace + 60 s, so a round before that leaves it open."""
    started = time.monotonic()
    remaining = awaiting(ledger)
    closing = Closing(open_before=len(remaining))
    why: dict[str, str] = {}
    unnamed = "no round ran"  # why a request the last round did not name is still open
    while remaining:
        answer = operator_cli(env, "reconcile", "--json")
        closing.rounds += 1
        if answer.body is None:
            closing.errors.append(answer.error())
            why, unnamed = {}, f"the last round failed: {answer.error()}"
        else:
            closing.settled.update(answer.body["settled"])
            why, unnamed = _why_open(answer.body), "leased by another reconciler in the last round"
        remaining = awaiting(ledger)
        print(
            f"reconcile round {closing.rounds}: {len(closing.settled)} settled so far, "
            f"{len(remaining)} in needs_reconciliation",
            file=sys.stderr,
        )
        hopeless = answer.body is not None and remaining <= _beyond_waiting(answer.body)
        if not remaining or hopeless or time.monotonic() - started > timeout:
            break
        time.sleep(pause)
    closing.seconds = time.monotonic() - started
    closing.left = {rid: why.get(rid, unnamed) for rid in sorted(remaining)}
    return closing


def _why_open(report: Mapping[str, Any]) -> dict[str, str]:
    why = {rid: f"still open: {reason}" for rid, reason in report["still_open"].items()}
    why |= {rid: f"ambiguous: {reason}" for rid, reason in report["ambiguous"].items()}
    why |= dict.fromkeys(report["for_a_person"], "never reached Stripe: left to a person")
    return why


def _beyond_waiting(report: Mapping[str, Any]) -> set[str]:
    return set(report["ambiguous"]) | set(report["for_a_person"])


def prove_days(env: Mapping[str, str], days: list[date]) -> list[DayProof]:
    """`debit-worker reconcile --day D --json` for each day; a run that printed no proof
    (Stripe's reads failed) is tried again, up to PROOF_TRIES times."""
    proofs = []
    for day in days:
        answer = CliAnswer(-1, None, "not run")
        tries = 0
        while tries < PROOF_TRIES and (tries == 0 or answer.body is None):
            tries += 1
            answer = operator_cli(env, "reconcile", "--day", day.isoformat(), "--json")
        error = None if answer.body is not None else answer.error()
        proofs.append(DayProof(day.isoformat(), answer.exit_code, tries, answer.body, error))
    return proofs


def escalations(ledger: Ledger) -> dict[str, str]:
    """How each request escalated to needs_reconciliation during the run ended, by request:
    a settlement's method ("stripe_records", "operator"), "resent" (the reconciler's one
    resend with the same key settled it), "attempt" (a later attempt of the worker, e.g. a
    redelivery), or "open"."""
    a = audit_log.c
    with ledger.engine.connect() as conn:
        trail = conn.execute(
            select(a.entity_id, a.action).where(
                a.entity == "request",
                a.action.in_([str(Status.NEEDS_RECONCILIATION), RESENT]),
            )
        ).all()
        methods = dict(conn.execute(select(settlements.c.request_id, settlements.c.method)).all())
        escalated = {rid for rid, action in trail if action == str(Status.NEEDS_RECONCILIATION)}
        of_escalated = select(debit_requests.c.request_id, debit_requests.c.status).where(
            debit_requests.c.request_id.in_(escalated)
        )
        statuses = dict(conn.execute(of_escalated).all())
    resent = {rid for rid, action in trail if action == RESENT}
    ended: dict[str, str] = {}
    for rid in escalated:
        if statuses.get(rid) not in {str(Status.SUCCEEDED), str(Status.FAILED)}:
            ended[rid] = "open"
        elif rid in methods:
            ended[rid] = methods[rid]
        else:
            ended[rid] = "resent" if rid in resent else "attempt"
    return ended


def escalation_counts(ended: Mapping[str, str]) -> dict[str, int]:
    return dict(sorted(Counter(ended.values()).items()))
