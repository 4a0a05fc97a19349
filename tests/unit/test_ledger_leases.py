"""Short leases in the ledger: renewed in one statement while a debit is in progress, a fence
before every Stripe call, a refusal that cannot land on a request another worker began, and
the janitor's take-over in the audit trail.

Every test here that takes the `ledger` fixture also runs on PostgreSQL
(tests/integration/test_ledger_leases_postgres.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from schemas.commands import DebitRequested
from worker.adapters.ledger import Ledger, Status, Success
from worker.adapters.ledger.janitor_store import abandoned_claims, take_over
from worker.domain.types import OutboxEvent, idempotency_key

from .fakes import ACCOUNT_ID, FakeClock, migrated_ledger, sql_counted

LEASE = 9.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


def a_command(request_id: str) -> DebitRequested:
    return DebitRequested.model_validate(
        {
            "request_id": request_id,
            "account": ACCOUNT_ID,
            "amount": 2500,
            "currency": "usd",
            "reason": "platform_charge",
        }
    )


def claimed(ledger: Ledger, request_id: str, owner: str) -> None:
    ledger.requests.claim(a_command(request_id), owner, LEASE)


def attempting(ledger: Ledger, request_id: str, owner: str) -> None:
    """Claimed by `owner`, and its first Stripe attempt begun."""
    claimed(ledger, request_id, owner)
    key = idempotency_key(request_id)
    assert ledger.requests.begin_attempt(request_id, owner, key, None) == 1


def lease_of(ledger: Ledger, request_id: str) -> tuple[str | None, datetime | None]:
    record = ledger.requests.get(request_id)
    assert record is not None
    return record.lease_owner, record.lease_until


# --- renewal --------------------------------------------------------------------------------


def test_every_lease_still_held_is_renewed_by_one_statement(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given two requests held by two owners of one process, 6 s into their leases
    claimed(ledger, "req-1", "p1:task-a")
    attempting(ledger, "req-2", "p1:task-b")
    clock.advance(6)

    # When the process renews both
    with sql_counted(ledger.engine) as sql:
        renewed = ledger.requests.renew_leases(
            [("req-1", "p1:task-a"), ("req-2", "p1:task-b")], LEASE
        )

    # Then both run a full lease from now, with one UPDATE
    assert renewed == {("req-1", "p1:task-a"), ("req-2", "p1:task-b")}
    until = clock.now + timedelta(seconds=LEASE)
    assert lease_of(ledger, "req-1") == ("p1:task-a", until)
    assert lease_of(ledger, "req-2") == ("p1:task-b", until)
    assert len(sql.statements) == 1, str(sql)
    assert sql.statements[0].startswith("UPDATE debit_requests"), str(sql)


def test_a_lease_taken_over_by_another_owner_is_not_renewed(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given req-1 held by p1, whose lease ran out and which p2 then claimed
    claimed(ledger, "req-1", "p1:task-a")
    claimed(ledger, "req-2", "p1:task-b")
    clock.advance(LEASE + 1)
    claimed(ledger, "req-1", "p2:task-c")
    taken_until = lease_of(ledger, "req-1")[1]

    # When p1 renews what it believes it holds
    renewed = ledger.requests.renew_leases([("req-1", "p1:task-a"), ("req-2", "p1:task-b")], LEASE)

    # Then only its own lease is renewed; p2's is left alone
    assert renewed == {("req-2", "p1:task-b")}
    assert lease_of(ledger, "req-1") == ("p2:task-c", taken_until)


def test_a_finished_or_released_request_is_not_renewed(ledger: Ledger) -> None:
    # Given one request released before its retry, and one that succeeded
    claimed(ledger, "req-1", "p1:a")
    ledger.requests.release("req-1", "p1:a")
    attempting(ledger, "req-2", "p1:b")
    event = OutboxEvent("evt-2", "req-2", "test.event", "debit.test", "{}")
    ledger.requests.record_succeeded("req-2", "p1:b", Success("py_1", None, None), event)

    # When both are renewed
    renewed = ledger.requests.renew_leases([("req-1", "p1:a"), ("req-2", "p1:b")], LEASE)

    # Then neither gets a lease back
    assert renewed == set()
    assert lease_of(ledger, "req-1") == (None, None)
    assert lease_of(ledger, "req-2") == (None, None)


def test_renewing_no_lease_sends_nothing(ledger: Ledger) -> None:
    # Given / When a process that holds nothing renews
    with sql_counted(ledger.engine) as sql:
        renewed = ledger.requests.renew_leases([], LEASE)

    # Then no statement is sent
    assert renewed == set()
    assert sql.statements == []


# --- the fence before Stripe ----------------------------------------------------------------


def test_a_later_attempt_is_counted_and_audited_while_its_owner_holds_the_lease(
    ledger: Ledger,
) -> None:
    # Given a request attempting, held by p1
    attempting(ledger, "req-1", "p1:a")

    # When p1 counts its next attempt
    counted = ledger.requests.count_attempt("req-1", "p1:a")

    # Then it is attempt 2, in the audit trail under p1's name
    assert counted == 2
    last = ledger.history("request", "req-1")[-1]
    assert (last.action, last.actor) == ("attempt", "p1:a")


def test_an_attempt_is_not_counted_once_its_owners_lease_has_run_out(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request attempting whose owner stalled past its lease
    attempting(ledger, "req-1", "p1:a")
    clock.advance(LEASE)

    # When the stalled owner counts its next attempt
    counted = ledger.requests.count_attempt("req-1", "p1:a")

    # Then it is refused (no Stripe call may follow), and nothing was counted or audited
    assert counted is None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert record.attempts == 1
    assert [e.action for e in ledger.history("request", "req-1")][-1] == "attempting"


def test_an_attempt_is_not_counted_for_an_owner_whose_lease_was_taken_over(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given p1's request taken over by p2 after p1's lease ran out
    attempting(ledger, "req-1", "p1:a")
    clock.advance(LEASE + 1)
    claimed(ledger, "req-1", "p2:b")

    # When each counts an attempt
    # Then only the holder's is counted
    assert ledger.requests.count_attempt("req-1", "p1:a") is None
    assert ledger.requests.count_attempt("req-1", "p2:b") == 2


def test_an_attempt_of_a_finished_request_is_not_counted(ledger: Ledger) -> None:
    # Given a request that succeeded (its lease cleared)
    attempting(ledger, "req-1", "p1:a")
    event = OutboxEvent("evt-1", "req-1", "test.event", "debit.test", "{}")
    ledger.requests.record_succeeded("req-1", "p1:a", Success("py_1", None, None), event)

    # When / Then no attempt is counted for it
    assert ledger.requests.count_attempt("req-1", "p1:a") is None


def test_the_first_attempt_does_not_begin_once_its_owners_lease_has_run_out(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request received by p1, which stalled past its lease deciding it
    claimed(ledger, "req-1", "p1:a")
    clock.advance(LEASE)

    # When p1 begins the attempt
    began = ledger.requests.begin_attempt("req-1", "p1:a", idempotency_key("req-1"), None)

    # Then it is refused: still received, no key, nothing counted
    assert began is None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.idempotency_key, record.attempts) == (
        Status.RECEIVED,
        None,
        0,
    )


# --- recording late -------------------------------------------------------------------------


def test_a_refusal_decided_before_any_attempt_is_not_recorded_once_another_began_one(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given p1 deciding a request when its lease ran out, and p2 took it over and began its
    # Stripe attempt
    claimed(ledger, "req-1", "p1:a")
    clock.advance(LEASE + 1)
    attempting(ledger, "req-1", "p2:b")
    event = OutboxEvent("evt-f", "req-1", "test.event", "debit.test", "{}")

    # When p1's rules refuse it and p1 records the refusal
    recorded = ledger.requests.record_failed(
        "req-1",
        "p1:a",
        code="consent_missing",
        message="no consent",
        stripe_error=None,
        event=event,
        unattempted=True,
    )

    # Then nothing is recorded: p2's attempt, which may move money, decides
    assert recorded is None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.lease_owner) == (Status.ATTEMPTING, "p2:b")
    assert ledger.outbox.for_request("req-1") == []


def test_a_refusal_decided_before_any_attempt_is_recorded_when_none_began(
    ledger: Ledger,
) -> None:
    # Given a request received, no attempt begun
    claimed(ledger, "req-1", "p1:a")
    event = OutboxEvent("evt-f", "req-1", "test.event", "debit.test", "{}")

    # When its refusal is recorded
    recorded = ledger.requests.record_failed(
        "req-1",
        "p1:a",
        code="consent_missing",
        message="no consent",
        stripe_error=None,
        event=event,
        unattempted=True,
    )

    # Then it is failed, with its event
    assert recorded is not None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.FAILED


# --- the janitor's take-over ----------------------------------------------------------------


def test_the_janitors_take_over_is_audited_with_the_lease_it_found(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request whose owner died attempting it: its lease ran out
    attempting(ledger, "req-1", "host:41:task-a")
    held_until = lease_of(ledger, "req-1")[1]
    clock.advance(LEASE + 1)
    [found] = abandoned_claims(ledger.engine, now=clock.now, stale_after=900, limit=10)

    # When two janitors take it over
    first = take_over(ledger.engine, found, now=clock.now, stale_after=900, actor="janitor")
    second = take_over(ledger.engine, found, now=clock.now, stale_after=900, actor="janitor")

    # Then one wins, the lease is cleared, and the trail names the janitor and the dead owner
    assert (first, second) == (True, False)
    assert lease_of(ledger, "req-1") == (None, None)
    last = ledger.history("request", "req-1")[-1]
    assert (last.action, last.actor) == ("requeued", "janitor")
    assert held_until is not None
    assert last.detail == {"lease_owner": "host:41:task-a", "lease_until": held_until.isoformat()}
