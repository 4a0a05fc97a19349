"""The ledger's records of reconciliation (issue 17) on a real SQLite file, migrated by the
real Alembic migration: when each charge was made, settlements written with the outcome they
settle, the reconciler's leases, the schedule's lock, runs and their differences, and the
reads that prove a day.

Every test here that takes the `ledger` fixture also runs on PostgreSQL
(tests/integration/test_ledger_reconciliation_postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from worker.adapters.ledger import DifferenceRow, Ledger, LedgerDebit, Settlement, Status, Success
from worker.adapters.ledger.tables import debit_requests, settlements
from worker.domain.types import idempotency_key

from .fakes import ACCOUNT_ID, FakeClock, migrated_ledger, sql_counted
from .test_ledger import LEASE, a_command, an_event, begin


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


CHARGED = datetime(2026, 11, 15, 11, 59, 58, tzinfo=UTC)
EVIDENCE: dict[str, Any] = {
    "method": "stripe_records",
    "read_at": "2026-11-15T12:00:00+00:00",
    "charges": ["py_1"],
    "events": ["evt_1", "evt_2"],
}


def escalated(ledger: Ledger, request_id: str = "req-1") -> None:
    """A request whose attempt began and whose answer was lost: it awaits reconciliation."""
    ledger.requests.claim(a_command(request_id), "w1", LEASE)
    begin(ledger, request_id)
    ledger.requests.mark_needs_reconciliation(request_id, "w1", "OutcomeUnknown: timeout")


def status_of(ledger: Ledger, request_id: str = "req-1") -> Status:
    record = ledger.requests.get(request_id)
    assert record is not None
    return record.status


def settlement_rows(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(settlements)).scalar_one())


def stored_requests(
    ledger: Ledger,
    count: int,
    *,
    status: Status,
    charged_at: datetime | None,
    prefix: str = "req",
) -> list[str]:
    """`count` requests written straight into the ledger (a day's volume, without a handler):
    req-00000, req-00001, … of 100, 101, … cents, paid (when succeeded) by py_00000, …"""
    ids = [f"{prefix}-{n:05d}" for n in range(count)]
    rows: list[dict[str, Any]] = [
        {
            "request_id": request_id,
            "fingerprint": "f" * 64,
            "account": ACCOUNT_ID,
            "amount": 100 + n,
            "currency": "usd",
            "reason": "platform_charge",
            "command": {},
            "status": str(status),
            "attempts": 1,
            "payment_id": f"py_{n:05d}" if status is Status.SUCCEEDED else None,
            "charged_at": charged_at,
            "received_at": CHARGED,
            "updated_at": CHARGED,
        }
        for n, request_id in enumerate(ids)
    ]
    with ledger.engine.begin() as conn:
        conn.execute(insert(debit_requests), rows)
    return ids


# --- when each charge was made --------------------------------------------------------------


def test_a_success_stores_when_stripe_made_the_charge(ledger: Ledger) -> None:
    # Given an attempting request
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)

    # When its success is recorded with the charge's `created` time
    ledger.requests.record_succeeded(
        "req-1", "w1", Success("py_1", None, None, charged_at=CHARGED), an_event()
    )

    # Then the record reads it back in UTC, and the audit entry carries it
    record = ledger.requests.get("req-1")
    assert record is not None
    assert record.charged_at == CHARGED
    assert record.charged_at.tzinfo is UTC
    assert ledger.history("request", "req-1")[-1].detail == {
        "payment_id": "py_1",
        "charged_at": CHARGED.isoformat(),
    }


def test_a_request_not_yet_charged_has_no_charge_time(ledger: Ledger) -> None:
    # Given a new claim, and a success recorded without a charge time
    claim = ledger.requests.claim(a_command(), "w1", LEASE)
    ledger.requests.claim(a_command("req-2"), "w1", LEASE)
    begin(ledger, "req-2")
    ledger.requests.record_succeeded("req-2", "w1", Success("py_2", None, None), an_event("req-2"))

    # When they are read
    # Then neither has a charge time, and the claim's record is still the stored row
    assert claim.record.charged_at is None
    assert claim.record == ledger.requests.get("req-1")
    paid = ledger.requests.get("req-2")
    assert paid is not None
    assert (paid.status, paid.charged_at) == (Status.SUCCEEDED, None)


# --- settlements ----------------------------------------------------------------------------


def test_a_settled_success_writes_its_settlement_and_evidence_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request awaiting reconciliation
    escalated(ledger)
    clock.advance(60)
    paid = Success("py_1", "tr_1", "txn_1", charged_at=CHARGED)

    # When the reconciler settles it as succeeded, twice (the second with another event)
    first = ledger.requests.record_succeeded(
        "req-1", "rc-1", paid, an_event(), evidence=EVIDENCE, actor="reconciler"
    )
    second = ledger.requests.record_succeeded(
        "req-1",
        "rc-1",
        paid,
        an_event(event_id="evt-2"),
        evidence={**EVIDENCE, "method": "resent"},
        actor="operator:alice",
    )

    # Then the first wrote the outcome, its event, its settlement and one audit entry by the
    # reconciler with the evidence; the second wrote nothing
    assert first is not None
    assert second is None
    assert status_of(ledger) is Status.SUCCEEDED
    assert ledger.reconciliation.settlement("req-1") == Settlement(
        request_id="req-1",
        settled_at=clock.now,
        actor="reconciler",
        outcome=Status.SUCCEEDED,
        method="stripe_records",
        evidence=EVIDENCE,
    )
    assert settlement_rows(ledger) == 1
    history = ledger.history("request", "req-1")
    assert [(e.action, e.actor) for e in history][-2:] == [
        ("needs_reconciliation", "w1"),
        ("succeeded", "reconciler"),
    ]
    assert history[-1].detail == {
        "payment_id": "py_1",
        "transfer_id": "tr_1",
        "balance_transaction": "txn_1",
        "charged_at": CHARGED.isoformat(),
        "evidence": EVIDENCE,
    }
    assert [p.event.event_id for p in ledger.outbox.for_request("req-1")] == ["evt-1"]


def test_a_settled_failure_writes_its_settlement_and_evidence_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request awaiting reconciliation
    escalated(ledger)
    evidence = {"method": "operator", "note": "no charge in the dashboard"}

    # When an operator settles it as not executed, twice
    def settle(event_id: str) -> int | None:
        return ledger.requests.record_failed(
            "req-1",
            "cli",
            code="not_executed",
            message="Stripe holds no charge for it",
            stripe_error=None,
            event=an_event(event_id=event_id),
            evidence=evidence,
            actor="operator:alice",
        )

    first, second = settle("evt-1"), settle("evt-2")

    # Then the first wrote the failure, its settlement and its audit entry; the second nothing
    assert first is not None
    assert second is None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.failure_code) == (Status.FAILED, "not_executed")
    assert ledger.reconciliation.settlement("req-1") == Settlement(
        "req-1", clock.now, "operator:alice", Status.FAILED, "operator", evidence
    )
    assert settlement_rows(ledger) == 1
    last = ledger.history("request", "req-1")[-1]
    assert (last.action, last.actor, last.detail) == (
        "failed",
        "operator:alice",
        {
            "failure_code": "not_executed",
            "failure_message": "Stripe holds no charge for it",
            "evidence": evidence,
        },
    )
    assert len(ledger.outbox.for_request("req-1")) == 1


def test_an_outcome_without_evidence_is_no_settlement(ledger: Ledger) -> None:
    # Given an attempting request
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)

    # When its success is recorded by the worker, as every debit's is
    ledger.requests.record_succeeded("req-1", "w1", Success("py_1", None, None), an_event())

    # Then nothing was settled, and the entry is the worker's
    assert ledger.reconciliation.settlement("req-1") is None
    last = ledger.history("request", "req-1")[-1]
    assert (last.actor, last.detail) == ("w1", {"payment_id": "py_1"})


def test_a_settlement_whose_row_cannot_be_written_records_no_outcome(ledger: Ledger) -> None:
    # Given a request awaiting reconciliation that somehow already has a settlement row
    escalated(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(settlements),
            {
                "request_id": "req-1",
                "settled_at": CHARGED,
                "actor": "someone",
                "outcome": "failed",
                "method": "operator",
                "evidence": {},
            },
        )

    # When the reconciler settles it
    # Then the settlement is refused, and the outcome written with it is rolled back too
    with pytest.raises(IntegrityError):
        ledger.requests.record_succeeded(
            "req-1", "rc-1", Success("py_1", None, None), an_event(), evidence=EVIDENCE
        )
    assert status_of(ledger) is Status.NEEDS_RECONCILIATION
    assert ledger.outbox.for_request("req-1") == []
    assert ledger.history("request", "req-1")[-1].action == "needs_reconciliation"


def test_evidence_without_a_method_is_refused_before_anything_is_written(
    ledger: Ledger,
) -> None:
    # Given a request awaiting reconciliation
    escalated(ledger)

    # When it is settled with evidence that does not say how it was found
    # Then nothing is recorded
    with pytest.raises(ValueError, match="method"):
        ledger.requests.record_succeeded(
            "req-1", "rc-1", Success("py_1", None, None), an_event(), evidence={"charges": []}
        )
    assert status_of(ledger) is Status.NEEDS_RECONCILIATION
    assert ledger.reconciliation.settlement("req-1") is None


# --- the reconciler's work: open requests and their leases ----------------------------------


def test_open_requests_are_those_awaiting_reconciliation_oldest_first(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given three escalated requests a second apart (the first touched again last), and one
    # still attempting
    for request_id in ("req-a", "req-b", "req-c"):
        escalated(ledger, request_id)
        clock.advance(1)
    ledger.reconciliation.take("req-a", "rc-1", LEASE)  # a lease leaves updated_at alone
    ledger.requests.claim(a_command("req-d"), "w1", LEASE)
    begin(ledger, "req-d")

    # When the two oldest open requests are asked for
    listed = ledger.reconciliation.open_requests(limit=2)

    # Then they are the two escalated first
    assert [r.request_id for r in listed] == ["req-a", "req-b"]
    assert {r.status for r in listed} == {Status.NEEDS_RECONCILIATION}


def test_take_leases_a_request_without_touching_when_it_was_last_attempted(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request escalated a while ago
    escalated(ledger)
    escalated_at = clock.now
    clock.advance(600)

    # When the reconciler takes it
    taken = ledger.reconciliation.take("req-1", "rc-1", LEASE)

    # Then it holds the lease, and updated_at still says when Stripe was last tried
    assert taken is not None
    assert taken == ledger.requests.get("req-1")
    assert (taken.status, taken.lease_owner) == (Status.NEEDS_RECONCILIATION, "rc-1")
    assert taken.lease_until == clock.now + timedelta(seconds=LEASE)
    assert taken.updated_at == escalated_at


def test_take_is_refused_while_another_holds_the_lease_and_granted_after(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request taken by rc-1
    escalated(ledger)
    ledger.reconciliation.take("req-1", "rc-1", LEASE)

    # When rc-2 takes it at the end of the lease, rc-1 takes it again, and rc-2 after that
    clock.advance(LEASE)
    renewed_at = clock.now
    at_the_end = ledger.reconciliation.take("req-1", "rc-2", LEASE)
    again = ledger.reconciliation.take("req-1", "rc-1", LEASE)
    clock.advance(LEASE + 0.001)
    after = ledger.reconciliation.take("req-1", "rc-2", LEASE)

    # Then rc-2 is refused while the lease holds; its holder renews it; rc-2 has it after
    assert at_the_end is None
    assert again is not None
    assert again.lease_until == renewed_at + timedelta(seconds=LEASE)
    assert after is not None
    assert after.lease_owner == "rc-2"


def test_take_is_refused_for_a_request_not_awaiting_reconciliation(ledger: Ledger) -> None:
    # Given a request attempting (leased to nobody) and one that succeeded
    ledger.requests.claim(a_command("req-1"), "w1", LEASE)
    begin(ledger, "req-1")
    ledger.requests.release("req-1", "w1")
    ledger.requests.claim(a_command("req-2"), "w1", LEASE)
    begin(ledger, "req-2")
    ledger.requests.record_succeeded("req-2", "w1", Success("py_2", None, None), an_event("req-2"))

    # When the reconciler tries to take them, and a request the ledger never saw
    taken = [ledger.reconciliation.take(r, "rc-1", LEASE) for r in ("req-1", "req-2", "nope")]

    # Then it gets none of them
    assert taken == [None, None, None]
    record = ledger.requests.get("req-1")
    assert record is not None
    assert record.lease_owner is None


def test_a_request_taken_for_reconciliation_is_claimed_by_its_taker_only(
    ledger: Ledger,
) -> None:
    # Given a request taken by rc-1
    escalated(ledger)
    ledger.reconciliation.take("req-1", "rc-1", LEASE)

    # When a worker and then rc-1 claim it (as handlers.resume does)
    other = ledger.requests.claim(a_command(), "w2", LEASE)
    taker = ledger.requests.claim(a_command(), "rc-1", LEASE)

    # Then the worker finds it busy, and rc-1 resumes it with its key
    assert (other.kind.value, taker.kind.value) == ("busy", "resumed")
    assert taker.record.idempotency_key == idempotency_key("req-1")


def test_release_frees_a_taken_request_only_for_its_holder(ledger: Ledger) -> None:
    # Given a request taken by rc-1
    escalated(ledger)
    ledger.reconciliation.take("req-1", "rc-1", LEASE)

    # When rc-2 releases it, then rc-1
    ledger.reconciliation.release("req-1", "rc-2")
    still = ledger.requests.get("req-1")
    ledger.reconciliation.release("req-1", "rc-1")

    # Then only rc-1's release freed it, and anyone may take it at once
    assert still is not None
    assert still.lease_owner == "rc-1"
    freed = ledger.requests.get("req-1")
    assert freed is not None
    assert (freed.lease_owner, freed.lease_until) == (None, None)
    assert ledger.reconciliation.take("req-1", "rc-2", LEASE) is not None


# --- the schedule's lock --------------------------------------------------------------------


def test_a_scheduled_day_is_claimed_by_its_first_caller_only(ledger: Ledger) -> None:
    # Given no day claimed yet
    # When two workers claim the same day, and one claims the next day
    first = ledger.reconciliation.claim_scheduled_day("2026-11-14", "host-a:1")
    second = ledger.reconciliation.claim_scheduled_day("2026-11-14", "host-b:2")
    next_day = ledger.reconciliation.claim_scheduled_day("2026-11-15", "host-b:2")

    # Then the first caller of each day wins
    assert (first, second, next_day) == (True, False, True)


# --- runs and their differences -------------------------------------------------------------


def test_a_run_starts_running_and_finishes_with_its_counts(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a run started for a day
    started = clock.now
    run_id = ledger.reconciliation.start_run("2026-11-14", "cli")
    running = ledger.reconciliation.run(run_id)
    clock.advance(42)

    # When it finishes with differences
    ledger.reconciliation.finish_run(
        run_id,
        status="differences",
        stripe_charges=10,
        ledger_debits=9,
        matched=9,
        differences=1,
        unexplained=1,
        list_requests=2,
    )
    finished = ledger.reconciliation.run(run_id)

    # Then it was running without counts, and is now finished with them
    assert running is not None
    assert (running.day, running.trigger, running.status, running.started_at) == (
        "2026-11-14",
        "cli",
        "running",
        started,
    )
    assert (running.finished_at, running.matched, running.list_requests) == (None, None, None)
    assert finished is not None
    assert (finished.status, finished.finished_at, finished.error) == (
        "differences",
        clock.now,
        None,
    )
    counts = (
        finished.stripe_charges,
        finished.ledger_debits,
        finished.matched,
        finished.differences,
        finished.unexplained,
        finished.list_requests,
    )
    assert counts == (10, 9, 9, 1, 1, 2)


def test_a_run_that_failed_keeps_its_error_and_cannot_be_finished_again(
    ledger: Ledger,
) -> None:
    # Given a run that ended in an error
    run_id = ledger.reconciliation.start_run("2026-11-14", "schedule")

    def finish(run_id: int, status: str, error: str | None = None) -> None:
        ledger.reconciliation.finish_run(
            run_id,
            status=status,
            stripe_charges=0,
            ledger_debits=0,
            matched=0,
            differences=0,
            unexplained=0,
            list_requests=3,
            error=error,
        )

    finish(run_id, "error", "Stripe did not answer")

    # When it is finished again, or a run that does not exist is
    # Then both are refused, and the error stands
    with pytest.raises(LookupError):
        finish(run_id, "clean")
    with pytest.raises(LookupError):
        finish(run_id + 1, "clean")
    run = ledger.reconciliation.run(run_id)
    assert run is not None
    assert (run.status, run.error, run.list_requests) == ("error", "Stripe did not answer", 3)
    assert ledger.reconciliation.run(run_id + 1) is None


def test_runs_are_listed_newest_first_up_to_the_limit(ledger: Ledger, clock: FakeClock) -> None:
    # Given three runs, a minute apart
    ids = []
    for day in ("2026-11-12", "2026-11-13", "2026-11-14"):
        ids.append(ledger.reconciliation.start_run(day, "schedule"))
        clock.advance(60)

    # When the last two are asked for
    runs = ledger.reconciliation.runs(limit=2)

    # Then they are the newest two, newest first
    assert [(r.id, r.day) for r in runs] == [(ids[2], "2026-11-14"), (ids[1], "2026-11-13")]


def test_a_runs_differences_are_stored_together_and_read_back_in_order(
    ledger: Ledger,
) -> None:
    # Given two runs
    run_id = ledger.reconciliation.start_run("2026-11-14", "cli")
    other = ledger.reconciliation.start_run("2026-11-13", "cli")
    found = [
        DifferenceRow("stripe_only", None, "py_9", False, {"amount": 500, "currency": "usd"}),
        DifferenceRow("ledger_only", "req-7", "py_7", True, {"why": "refunded"}),
        DifferenceRow("paid_twice", "req-8", "py_8b", False, {"charges": ["py_8a", "py_8b"]}),
    ]

    # When differences are added to each (nothing, then several at once)
    ledger.reconciliation.add_differences(run_id, [])
    ledger.reconciliation.add_differences(run_id, found)
    ledger.reconciliation.add_differences(other, found[:1])

    # Then each run reads back its own, in the order they were added
    assert ledger.reconciliation.differences(run_id) == found
    assert ledger.reconciliation.differences(other) == found[:1]
    assert ledger.reconciliation.differences(other + 1) == []


# --- the ledger's side of a day -------------------------------------------------------------


def test_charged_between_yields_the_successes_charged_in_the_half_open_window(
    ledger: Ledger,
) -> None:
    # Given successes charged just before, at, just inside and at the end of a window, one
    # without a charge time, and a failure
    start = datetime(2026, 11, 14, tzinfo=UTC)
    end = start + timedelta(days=1)
    tick = timedelta(microseconds=1)
    charged = {"req-0": start - tick, "req-1": start, "req-2": end - tick, "req-3": end}
    for request_id, at in charged.items():
        ledger.requests.claim(a_command(request_id), "w1", LEASE)
        begin(ledger, request_id)
        paid = Success(f"py_{request_id}", None, None, charged_at=at)
        ledger.requests.record_succeeded(request_id, "w1", paid, an_event(request_id))
    ledger.requests.claim(a_command("req-4"), "w1", LEASE)
    begin(ledger, "req-4")
    ledger.requests.record_succeeded("req-4", "w1", Success("py_4", None, None), an_event("req-4"))
    ledger.requests.claim(a_command("req-5"), "w1", LEASE)
    ledger.requests.record_failed(
        "req-5", "w1", code="x", message="y", stripe_error=None, event=an_event("req-5")
    )

    # When the window [start, end) is read
    debits = list(ledger.reconciliation.charged_between(start, end))

    # Then it holds the two charged inside it, with what the ledger knows of each
    assert debits == [
        LedgerDebit("req-1", "py_req-1", 2500, "usd", ACCOUNT_ID, Status.SUCCEEDED),
        LedgerDebit("req-2", "py_req-2", 2500, "usd", ACCOUNT_ID, Status.SUCCEEDED),
    ]


def test_charged_between_reads_a_whole_day_beyond_one_batch(ledger: Ledger) -> None:
    # Given 2,500 successes charged inside the day, and 10 the day before
    day = datetime(2026, 11, 14, tzinfo=UTC)
    ids = stored_requests(ledger, 2_500, status=Status.SUCCEEDED, charged_at=day)
    stored_requests(
        ledger, 10, status=Status.SUCCEEDED, charged_at=day - timedelta(hours=1), prefix="old"
    )

    # When the day is read
    debits = ledger.reconciliation.charged_between(day, day + timedelta(days=1))

    # Then every one of the day's comes through, each once
    seen = [debit.request_id for debit in debits]
    assert sorted(seen) == ids


def test_debits_of_reads_any_number_of_requests_a_thousand_at_a_time(ledger: Ledger) -> None:
    # Given 2,500 requests in the ledger, and one escalated before any payment
    ids = stored_requests(ledger, 2_500, status=Status.SUCCEEDED, charged_at=None)
    escalated(ledger, "req-open")

    # When the ledger's view of all of them, and of one it never saw, is read
    with sql_counted(ledger.engine) as sql:
        debits = ledger.reconciliation.debits_of([*ids, "req-open", "req-unknown"])

    # Then each known request is there, whatever its status, read in three statements
    assert len(debits) == 2_501
    assert debits["req-01234"] == LedgerDebit(
        "req-01234", "py_01234", 1334, "usd", ACCOUNT_ID, Status.SUCCEEDED
    )
    assert debits["req-open"] == LedgerDebit(
        "req-open", None, 2500, "usd", ACCOUNT_ID, Status.NEEDS_RECONCILIATION
    )
    reads = [s for s in sql.statements if s.startswith("SELECT") and "debit_requests" in s]
    assert len(reads) == 3, str(sql)


def test_debits_of_nothing_reads_nothing(ledger: Ledger) -> None:
    # Given a ledger / When no request is asked for
    with sql_counted(ledger.engine) as sql:
        debits = ledger.reconciliation.debits_of([])

    # Then nothing is read
    assert debits == {}
    assert sql.statements == []


# --- the audit trail ------------------------------------------------------------------------


def test_an_entry_can_be_added_to_a_requests_trail_without_changing_the_request(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request awaiting reconciliation
    escalated(ledger)
    before = ledger.requests.get("req-1")
    clock.advance(5)

    # When the reconciler records that Stripe's records were ambiguous
    detail = {"charges": ["py_1", "py_2"], "method": "stripe_records"}
    ledger.reconciliation.add_audit("req-1", "reconcile_ambiguous", "reconciler", detail)

    # Then the trail has the entry, and the request is as it was
    last = ledger.history("request", "req-1")[-1]
    assert (last.at, last.action, last.actor, last.detail) == (
        clock.now,
        "reconcile_ambiguous",
        "reconciler",
        detail,
    )
    assert ledger.requests.get("req-1") == before
