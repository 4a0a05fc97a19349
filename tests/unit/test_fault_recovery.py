"""The fault run's recovery figures (faults/recovery.py), on a real SQLite ledger: which debits
a killed worker held, when another process resumed each, and the 15 s bound."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest

from faults.recovery import RESUME_BOUND_SECONDS, RecoveryWatch, recovery_report
from schemas.commands import DebitRequested
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.janitor_store import abandoned_claims, take_over
from worker.domain.types import idempotency_key

from .fakes import ACCOUNT_ID, FakeClock, migrated_ledger

LEASE = 9.0
DEAD = 111  # the killed worker's pid
HOST = socket.gethostname()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


def owner(pid: int, task: str = "t1") -> str:
    return f"{HOST}:{pid}:{task}"


def attempting(ledger: Ledger, request_id: str, by: str) -> None:
    command = DebitRequested.model_validate(
        {
            "request_id": request_id,
            "account": ACCOUNT_ID,
            "amount": 100,
            "currency": "usd",
            "reason": "platform_charge",
        }
    )
    ledger.requests.claim(command, by, LEASE)
    assert ledger.requests.begin_attempt(request_id, by, idempotency_key(request_id), None)


def resumed_by_janitor_then(ledger: Ledger, clock: FakeClock, request_id: str, by: str) -> None:
    """The janitor takes the expired claim over, and `by` makes the next attempt."""
    [found] = [
        r
        for r in abandoned_claims(ledger.engine, now=clock.now, stale_after=900, limit=10)
        if r.request_id == request_id
    ]
    assert take_over(ledger.engine, found, now=clock.now, stale_after=900, actor="janitor")
    attempting_again(ledger, request_id, by)


def attempting_again(ledger: Ledger, request_id: str, by: str) -> None:
    record = ledger.requests.get(request_id)
    assert record is not None
    command = DebitRequested.model_validate(record.command)
    ledger.requests.claim(command, by, LEASE)
    assert ledger.requests.count_attempt(request_id, by) is not None


def killed(ledger: Ledger, clock: FakeClock, *, others_alive: bool = True) -> RecoveryWatch:
    watch = RecoveryWatch(ledger.engine)
    watch.killed(DEAD, clock.now, others_alive=others_alive)
    return watch


def test_a_debit_held_by_the_killed_worker_is_measured_from_the_kill_to_its_next_attempt(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given the dead worker held req-1 and another worker held req-2 when it was killed
    attempting(ledger, "req-1", owner(DEAD))
    attempting(ledger, "req-2", owner(222))
    kill_at = clock.now
    watch = killed(ledger, clock)

    # When the janitor takes req-1 over after its lease, and worker 333 attempts it 10 s later
    clock.advance(LEASE + 1)
    resumed_by_janitor_then(ledger, clock, "req-1", owner(333))
    report, violations = recovery_report(watch, [], [])

    # Then only req-1 was in flight, resumed 10 s after the kill: within the bound
    assert watch.kills[0].in_flight == ("req-1",)
    assert watch.kills[0].at == kill_at
    assert report["in_flight_at_kills"] == 1
    assert report["resumed_after_seconds"] == {
        "count": 1,
        "p50": LEASE + 1,
        "p99": LEASE + 1,
        "max": LEASE + 1,
    }
    assert report["bound_met"] is True
    assert report["over_bound"] == []
    # and the janitor's take-over, in the same second, is its own figure
    assert report["taken_over_after_seconds"]["max"] == LEASE + 1
    assert violations == []


def test_a_resume_later_than_the_bound_is_reported_against_it(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a debit of the dead worker resumed only 16 s after the kill
    attempting(ledger, "req-1", owner(DEAD))
    watch = killed(ledger, clock)
    clock.advance(RESUME_BOUND_SECONDS + 1)
    resumed_by_janitor_then(ledger, clock, "req-1", owner(333))

    # When the report is made
    report, violations = recovery_report(watch, [], [])

    # Then the report names the late resume and says the bound was missed (a figure, not a
    # violation)
    assert report["over_bound"] == [f"req-1: resumed 16.0 s after the kill of worker {DEAD}"]
    assert report["bound_met"] is False
    assert violations == []


def test_a_debit_never_resumed_is_a_violation(ledger: Ledger, clock: FakeClock) -> None:
    # Given / When a debit of the dead worker nobody took over
    attempting(ledger, "req-1", owner(DEAD))
    _, violations = recovery_report(killed(ledger, clock), [], [])
    # Then it is a violation
    assert violations == [f"req-1: in flight at the kill of worker {DEAD}, never resumed"]


def test_with_no_worker_alive_it_counts_from_the_next_start(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given the only worker killed holding req-1, a new one started 5 s later, which
    # resumed it 20 s after the kill
    attempting(ledger, "req-1", owner(DEAD))
    watch = killed(ledger, clock, others_alive=False)
    restart = clock.now + timedelta(seconds=5)
    clock.advance(20)
    resumed_by_janitor_then(ledger, clock, "req-1", owner(444))

    # When the report is made
    report, violations = recovery_report(watch, [clock.now - timedelta(hours=1), restart], [])

    # Then it was resumed 15 s after the restart: within the bound
    assert report["sigkills_with_no_worker_alive"] == 1
    assert report["resumed_after_seconds"]["max"] == 15.0
    assert violations == []


def test_a_recovery_overlapping_an_infrastructure_restart_is_reported_apart(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a kill followed by a PostgreSQL restart, and the debit resumed 40 s later
    attempting(ledger, "req-1", owner(DEAD))
    watch = killed(ledger, clock)
    outage = (clock.now + timedelta(seconds=2), clock.now + timedelta(seconds=30))
    clock.advance(40)
    resumed_by_janitor_then(ledger, clock, "req-1", owner(333))

    # When the report is made
    report, violations = recovery_report(watch, [], [outage])

    # Then it is not held to the bound, but shown apart
    assert violations == []
    assert report["resumed_after_seconds"] == {"count": 0}
    assert report["overlapping_restarts"]["resumed_after_seconds"]["max"] == 40.0


def test_a_debit_the_dying_worker_finished_itself_needs_no_resume(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given the kill read req-1 as held, and its outcome (sent just before the kill) landed
    attempting(ledger, "req-1", owner(DEAD))
    watch = killed(ledger, clock)
    clock.advance(0.1)
    ledger.requests.mark_needs_reconciliation("req-1", owner(DEAD), "stored 500")

    # When the report is made
    report, violations = recovery_report(watch, [], [])

    # Then it is counted apart, not as a debit never resumed
    assert report["finished_by_the_dead_process"] == 1
    assert violations == []
