"""The ledger's contract on a real SQLite file, migrated by the real Alembic migration: claims
and leases, guarded transitions, refund budgets, the outbox, consents and the audit trail.

Every test here that takes the `ledger` fixture also runs on PostgreSQL
(tests/integration/test_ledger_postgres.py), where each transition is one statement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from schemas.commands import DebitRequested
from worker.adapters.ledger import ClaimKind, Ledger, RecoveryBudgetExceeded, Status, Success
from worker.adapters.ledger.migrate import current_revision, head_revision, upgrade
from worker.adapters.ledger.producer_budgets import ProducerLimitExceeded, reserve
from worker.adapters.ledger.tables import outbox, producer_budgets, producer_reservations
from worker.domain.types import DailyLimit, OutboxEvent, RefundFacts, idempotency_key

from .fakes import ACCOUNT_ID, REFUND_ID, FakeClock, a_refund, migrated_ledger

LEASE = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


def a_command(request_id: str = "req-1", **changes: object) -> DebitRequested:
    fields: dict[str, object] = {
        "request_id": request_id,
        "account": ACCOUNT_ID,
        "amount": 2500,
        "currency": "usd",
        "reason": "platform_charge",
    }
    fields.update(changes)
    return DebitRequested.model_validate(fields)


def a_recovery(request_id: str, amount: int) -> DebitRequested:
    return a_command(request_id, amount=amount, reason="refund_recovery", refund=REFUND_ID)


def an_event(request_id: str = "req-1", event_id: str = "evt-1") -> OutboxEvent:
    return OutboxEvent(
        event_id=event_id,
        request_id=request_id,
        event_type="test.event",
        routing_key="debit.test",
        body="{}",
    )


def begin(ledger: Ledger, request_id: str = "req-1", owner: str = "w1") -> int | None:
    return ledger.requests.begin_attempt(request_id, owner, idempotency_key(request_id), None)


PAID = Success("py_1", "tr_1", "txn_1")


# --- the schema -----------------------------------------------------------------------------


def test_the_migration_brings_a_new_file_to_head_and_is_safe_to_run_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Given a migrated ledger
    ledger = migrated_ledger(tmp_path, clock)

    # When the migration runs again
    revision = upgrade(ledger.engine)

    # Then it is still at the head revision
    assert revision == head_revision() == current_revision(ledger.engine)


# --- claims ---------------------------------------------------------------------------------


def test_the_first_claim_of_a_request_is_new_and_holds_a_lease(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given an empty ledger
    # When a command is claimed
    claim = ledger.requests.claim(a_command(), "w1", LEASE)

    # Then it is new, received, and leased to its owner
    assert claim.kind is ClaimKind.NEW
    record = claim.record
    assert (record.status, record.attempts, record.lease_owner) == (Status.RECEIVED, 0, "w1")
    assert record.lease_until == clock.now + timedelta(seconds=LEASE)
    assert record.command["amount"] == 2500


def test_a_new_claims_record_is_the_row_as_the_ledger_stored_it(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a clock in another time zone than UTC
    clock.now = clock.now.astimezone(timezone(timedelta(hours=-5)))

    # When a command is claimed for the first time (its record is not read back)
    claim = ledger.requests.claim(a_command(metadata={"invoice": "in_1"}), "w1", LEASE)

    # Then the record it returns is the one a read of the row returns, datetimes in UTC
    assert claim.kind is ClaimKind.NEW
    assert claim.record == ledger.requests.get("req-1")
    assert claim.record.received_at.tzinfo is UTC


def test_a_resumed_claim_returns_the_row_with_its_new_lease(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request claimed by w1 whose lease ran out
    ledger.requests.claim(a_command(), "w1", LEASE)
    clock.advance(LEASE + 1)

    # When w2 claims it
    claim = ledger.requests.claim(a_command(), "w2", LEASE)

    # Then the record it returns is the row as it now is: w2's lease, touched now
    assert claim.kind is ClaimKind.RESUMED
    assert claim.record == ledger.requests.get("req-1")
    assert (claim.record.lease_owner, claim.record.updated_at) == ("w2", clock.now)


def test_a_second_claim_by_the_lease_holder_resumes(ledger: Ledger) -> None:
    # Given a claimed request
    ledger.requests.claim(a_command(), "w1", LEASE)

    # When its owner claims it again
    claim = ledger.requests.claim(a_command(), "w1", LEASE)

    # Then it resumes
    assert claim.kind is ClaimKind.RESUMED


def test_another_owner_is_busy_while_the_lease_holds_and_resumes_once_it_expired(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request leased to w1
    ledger.requests.claim(a_command(), "w1", LEASE)

    # When w2 claims it before and at the end of the lease
    clock.advance(LEASE)
    at_the_end = ledger.requests.claim(a_command(), "w2", LEASE)
    # And after it
    clock.advance(0.001)
    after = ledger.requests.claim(a_command(), "w2", LEASE)

    # Then it is busy first, and w2's afterwards
    assert at_the_end.kind is ClaimKind.BUSY
    assert at_the_end.record.lease_owner == "w1"
    assert after.kind is ClaimKind.RESUMED
    assert after.record.lease_owner == "w2"
    assert after.record.lease_until == clock.now + timedelta(seconds=LEASE)


def test_a_released_lease_can_be_taken_at_once(ledger: Ledger) -> None:
    # Given w1 released its lease
    ledger.requests.claim(a_command(), "w1", LEASE)
    ledger.requests.release("req-1", "w1")

    # When w2 claims
    claim = ledger.requests.claim(a_command(), "w2", LEASE)

    # Then w2 has it
    assert claim.kind is ClaimKind.RESUMED
    assert claim.record.lease_owner == "w2"


def test_a_finished_request_is_claimed_as_finished(ledger: Ledger) -> None:
    # Given a request that succeeded
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)
    ledger.requests.record_succeeded("req-1", "w1", PAID, an_event())

    # When the same command is claimed again
    claim = ledger.requests.claim(a_command(), "w2", LEASE)

    # Then it is finished, with its payment
    assert claim.kind is ClaimKind.FINISHED
    assert claim.record.payment_id == "py_1"


@pytest.mark.parametrize("finished", [False, True])
def test_other_content_under_a_known_request_id_is_a_conflict(
    ledger: Ledger, finished: bool
) -> None:
    # Given a request, finished or not
    ledger.requests.claim(a_command(), "w1", LEASE)
    if finished:
        ledger.requests.record_failed(
            "req-1", "w1", code="x", message="y", stripe_error=None, event=an_event()
        )

    # When a command with the same request_id but another amount is claimed
    claim = ledger.requests.claim(a_command(amount=1), "w2", LEASE)

    # Then it is a conflict, and the record keeps the first command
    assert claim.kind is ClaimKind.CONFLICT
    assert claim.record.command["amount"] == 2500
    assert claim.record.lease_owner == (None if finished else "w1")


# --- begin_attempt --------------------------------------------------------------------------


def test_begin_attempt_moves_a_received_request_to_attempting_with_its_key(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a claimed request
    ledger.requests.claim(a_command(), "w1", LEASE)

    # When its owner begins the attempt
    began = begin(ledger)

    # Then it is attempting with the request's key, its first Stripe attempt counted
    assert began == 1
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.idempotency_key, record.attempts) == (
        Status.ATTEMPTING,
        idempotency_key("req-1"),
        1,
    )
    assert record.first_attempt_at == clock.now


def test_begin_attempt_refuses_a_worker_that_does_not_hold_the_lease(ledger: Ledger) -> None:
    # Given a request leased to w1
    ledger.requests.claim(a_command(), "w1", LEASE)

    # When w2 tries to begin the attempt
    began = begin(ledger, owner="w2")

    # Then nothing moved, and no attempt was counted
    assert began is None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.attempts, record.first_attempt_at) == (
        Status.RECEIVED,
        0,
        None,
    )


def test_begin_attempt_happens_only_once(ledger: Ledger) -> None:
    # Given a request already attempting
    ledger.requests.claim(a_command(), "w1", LEASE)
    assert begin(ledger) == 1

    # When the attempt is begun again
    # Then it is refused
    assert begin(ledger) is None


def test_the_refund_budget_reserves_each_recovery_and_refuses_to_go_past_the_refund(
    ledger: Ledger,
) -> None:
    # Given a refund of 50.00 and two recoveries of 30.00, both claimed
    refund = a_refund(amount=5000)
    for request_id in ("rec-1", "rec-2"):
        ledger.requests.claim(a_recovery(request_id, 3000), "w1", LEASE)

    # When both begin their attempts
    assert ledger.requests.begin_attempt("rec-1", "w1", "k1", refund) == 1
    with pytest.raises(RecoveryBudgetExceeded) as exceeded:
        ledger.requests.begin_attempt("rec-2", "w1", "k2", refund)

    # Then the second is refused, and its transaction rolled back entirely
    assert (exceeded.value.refunded, exceeded.value.reserved) == (5000, 3000)
    assert ledger.requests.reserved_for_refund(REFUND_ID) == 3000
    second = ledger.requests.get("rec-2")
    assert second is not None
    assert (second.status, second.idempotency_key, second.attempts) == (Status.RECEIVED, None, 0)
    assert [e.action for e in ledger.history("request", "rec-2")] == ["received"]


def test_a_recovery_that_fails_after_its_attempt_began_returns_its_reservation(
    ledger: Ledger,
) -> None:
    # Given a recovery of 40.00 reserved against a refund of 50.00
    refund = RefundFacts(REFUND_ID, 5000, "usd", "succeeded")
    ledger.requests.claim(a_recovery("rec-1", 4000), "w1", LEASE)
    ledger.requests.begin_attempt("rec-1", "w1", "k1", refund)
    assert ledger.requests.reserved_for_refund(REFUND_ID) == 4000

    # When it fails
    ledger.requests.record_failed(
        "rec-1", "w1", code="stripe_rejected", message="no", stripe_error=None, event=an_event()
    )

    # Then the reservation is given back, once, even if the failure is recorded again
    assert ledger.requests.reserved_for_refund(REFUND_ID) == 0
    assert (
        ledger.requests.record_failed(
            "rec-1", "w1", code="stripe_rejected", message="no", stripe_error=None, event=an_event()
        )
        is None
    )
    assert ledger.requests.reserved_for_refund(REFUND_ID) == 0


def test_a_recovery_refused_before_its_attempt_reserved_nothing_and_returns_nothing(
    ledger: Ledger,
) -> None:
    # Given 30.00 of a refund reserved by rec-1, and rec-2 refused by the policy
    refund = a_refund(amount=5000)
    ledger.requests.claim(a_recovery("rec-1", 3000), "w1", LEASE)
    ledger.requests.begin_attempt("rec-1", "w1", "k1", refund)
    ledger.requests.claim(a_recovery("rec-2", 3000), "w1", LEASE)

    # When rec-2's refusal is recorded (it never began)
    ledger.requests.record_failed(
        "rec-2",
        "w1",
        code="refund_recovery_exceeds_refund",
        message="m",
        stripe_error=None,
        event=an_event("rec-2", "evt-2"),
    )

    # Then rec-1's reservation is untouched
    assert ledger.requests.reserved_for_refund(REFUND_ID) == 3000


def test_the_producers_daily_room_is_reserved_once_per_request_and_refused_past_the_limit(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a producer allowed 50.00 a day, 30.00 of it reserved by req-1
    daily = DailyLimit("billing", "usd", 5000)
    with ledger.engine.begin() as conn:
        reserve(conn, "req-1", daily, 3000, clock.now)

    # When req-1 reserves again (its room is already held), and req-2 asks for 30.00 more
    clock.advance(1)
    with ledger.engine.begin() as conn:
        reserve(conn, "req-1", daily, 3000, clock.now)
    with pytest.raises(ProducerLimitExceeded) as exceeded, ledger.engine.begin() as conn:
        reserve(conn, "req-2", daily, 3000, clock.now)

    # Then req-1 counted once, req-2 was refused, and the producer's lock row was touched
    assert exceeded.value.used == 3000
    with ledger.engine.connect() as conn:
        held = conn.execute(select(producer_reservations.c.request_id)).scalars().all()
        touched = conn.execute(select(producer_budgets.c.updated_at)).scalars().all()
    assert held == ["req-1"]
    assert touched == [clock.now]


# --- outcomes and the outbox ----------------------------------------------------------------


def test_an_outcome_is_recorded_once_with_one_outbox_row(ledger: Ledger) -> None:
    # Given an attempting request
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)

    # When its success is recorded twice (the second with another event)
    first = ledger.requests.record_succeeded("req-1", "w1", PAID, an_event(event_id="evt-1"))
    second = ledger.requests.record_succeeded(
        "req-1", "w2", Success("py_2", None, None), an_event(event_id="evt-2")
    )

    # Then only the first counts: one outcome, one event, whose outbox row the first names
    assert first is not None
    assert second is None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.payment_id, record.lease_owner) == (
        Status.SUCCEEDED,
        "py_1",
        None,
    )
    assert [(p.row_id, p.event.event_id) for p in ledger.outbox.for_request("req-1")] == [
        (first, "evt-1")
    ]


def test_an_outcome_whose_event_is_already_in_the_outbox_names_that_row(ledger: Ledger) -> None:
    # Given an attempting request, and its event already in the outbox (event ids are
    # deterministic, so an earlier writer may have put it there)
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)
    ledger.outbox.add(an_event(event_id="evt-1"))
    [existing] = ledger.outbox.for_request("req-1")

    # When the outcome is recorded with that event
    row_id = ledger.requests.record_succeeded("req-1", "w1", PAID, an_event(event_id="evt-1"))

    # Then the outcome is recorded, and its row id is the existing row's: still one row
    assert row_id == existing.row_id
    assert len(ledger.outbox.for_request("req-1")) == 1
    record = ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.SUCCEEDED


def test_a_failure_cannot_be_recorded_over_a_success(ledger: Ledger) -> None:
    # Given a request that succeeded
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)
    ledger.requests.record_succeeded("req-1", "w1", PAID, an_event())

    # When a failure is recorded for it
    moved = ledger.requests.record_failed(
        "req-1", "w1", code="x", message="y", stripe_error=None, event=an_event(event_id="e2")
    )

    # Then the success stands
    assert moved is None
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.failure_code) == (Status.SUCCEEDED, None)


def test_the_outbox_keeps_one_row_per_event_id_and_marks_it_sent_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given an event added twice
    assert ledger.outbox.add(an_event())
    assert not ledger.outbox.add(an_event())

    # When it is old enough for the relay, and marked sent twice
    clock.advance(11)
    [pending] = ledger.outbox.unsent(older_than_seconds=10, limit=10)
    ledger.outbox.mark_sent(pending.row_id)
    ledger.outbox.mark_sent(pending.row_id)

    # Then it is sent, and no longer pending
    assert ledger.outbox.count_unsent() == 0
    assert ledger.outbox.unsent(older_than_seconds=0, limit=10) == []
    assert [p.sent for p in ledger.outbox.for_request("req-1")] == [True]


def test_rows_marked_sent_together_are_each_marked_once_and_others_stay_unsent(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given three events, the first already marked sent
    for n in (1, 2, 3):
        ledger.outbox.add(an_event(request_id=f"req-{n}", event_id=f"evt-{n}"))
    clock.advance(11)
    first, second, third = ledger.outbox.unsent(older_than_seconds=10, limit=10)
    ledger.outbox.mark_sent(first.row_id)

    # When the first two are marked sent in one batch
    ledger.outbox.mark_sent_many([first.row_id, second.row_id])

    # Then both are sent, the third is still pending, and no row was marked twice
    assert ledger.outbox.unsent(older_than_seconds=0, limit=10) == [third]
    with ledger.engine.connect() as conn:
        attempts = dict(conn.execute(select(outbox.c.event_id, outbox.c.publish_attempts)).all())
    assert attempts == {"evt-1": 1, "evt-2": 1, "evt-3": 0}


def test_unsent_returns_the_oldest_first_up_to_the_limit(ledger: Ledger, clock: FakeClock) -> None:
    # Given three events written a second apart
    for n in range(3):
        ledger.outbox.add(an_event(f"req-{n}", f"evt-{n}"))
        clock.advance(1)

    # When the relay asks for two that are at least two seconds old
    rows = ledger.outbox.unsent(older_than_seconds=2, limit=2)

    # Then it gets the two oldest, in order
    assert [r.event.event_id for r in rows] == ["evt-0", "evt-1"]


# --- reconciliation, counts -----------------------------------------------------------------


def test_a_request_whose_attempt_began_can_be_marked_for_reconciliation(ledger: Ledger) -> None:
    # Given an attempting request
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)

    # When the task gives up on it
    ledger.requests.mark_needs_reconciliation("req-1", "w1", "OutcomeUnknown: timeout")

    # Then it awaits reconciliation, unleased, and the audit says why
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.lease_owner) == (Status.NEEDS_RECONCILIATION, None)
    last = ledger.history("request", "req-1")[-1]
    assert (last.action, last.detail) == (
        "needs_reconciliation",
        {"why": "OutcomeUnknown: timeout", "stripe_called": True},
    )


def test_a_received_request_given_up_on_is_escalated_saying_stripe_was_never_called(
    ledger: Ledger,
) -> None:
    # Given a request that never reached Stripe (the policy has not allowed it yet)
    ledger.requests.claim(a_command(), "w1", LEASE)

    # When the task gives up on it
    ledger.requests.mark_needs_reconciliation("req-1", "w1", "TransientFailure: reads failed")

    # Then an operator sees it, and the audit says no money can have moved
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.idempotency_key) == (Status.NEEDS_RECONCILIATION, None)
    last = ledger.history("request", "req-1")[-1]
    assert last.detail["stripe_called"] is False


def test_an_escalated_request_that_never_reached_stripe_goes_through_the_rules_on_replay(
    ledger: Ledger,
) -> None:
    # Given a request escalated before its first attempt
    ledger.requests.claim(a_command(), "w1", LEASE)
    ledger.requests.mark_needs_reconciliation("req-1", "w1", "TransientFailure: reads failed")

    # When a replay claims it and the rules allow it
    ledger.requests.claim(a_command(), "w2", LEASE)
    began = ledger.requests.begin_attempt("req-1", "w2", "key-1", None)

    # Then it begins its first attempt like any new request
    record = ledger.requests.get("req-1")
    assert record is not None
    assert began == 1
    assert (record.status, record.idempotency_key) == (Status.ATTEMPTING, "key-1")


def test_a_recovery_escalated_before_any_attempt_gives_back_nothing_when_it_fails(
    ledger: Ledger,
) -> None:
    # Given a 30.00 recovery in flight, and a second recovery escalated before it ever
    # reserved anything (its Stripe reads kept failing)
    refund = a_refund(amount=5000)
    ledger.requests.claim(a_recovery("rec-1", 3000), "w1", LEASE)
    ledger.requests.begin_attempt("rec-1", "w1", "k1", refund)
    ledger.requests.claim(a_recovery("rec-2", 2000), "w1", LEASE)
    ledger.requests.mark_needs_reconciliation("rec-2", "w1", "TransientFailure: reads failed")

    # When the escalated one is later refused by the rules
    ledger.requests.record_failed(
        "rec-2", "w1", code="consent_missing", message="no", stripe_error=None, event=an_event()
    )

    # Then the first recovery's reservation is untouched
    assert ledger.requests.reserved_for_refund(REFUND_ID) == 3000


@pytest.mark.parametrize("outcome", [Status.SUCCEEDED, Status.FAILED])
def test_a_finished_request_is_never_marked_for_reconciliation(
    ledger: Ledger, outcome: Status
) -> None:
    # Given a finished request
    ledger.requests.claim(a_command(), "w1", LEASE)
    begin(ledger)
    if outcome is Status.SUCCEEDED:
        ledger.requests.record_succeeded("req-1", "w1", PAID, an_event())
    else:
        ledger.requests.record_failed(
            "req-1", "w1", code="x", message="y", stripe_error=None, event=an_event()
        )

    # When someone tries to mark it
    ledger.requests.mark_needs_reconciliation("req-1", "w1", "late")

    # Then its outcome stands
    record = ledger.requests.get("req-1")
    assert record is not None
    assert record.status is outcome


def test_count_by_status_counts_every_request_by_its_status(ledger: Ledger) -> None:
    # Given requests in four states
    for request_id in ("a", "b", "c", "d", "e"):
        ledger.requests.claim(a_command(request_id), "w1", LEASE)
    for request_id in ("b", "c", "d", "e"):
        begin(ledger, request_id)
    ledger.requests.record_succeeded("c", "w1", PAID, an_event("c", "evt-c"))
    ledger.requests.record_succeeded("d", "w1", PAID, an_event("d", "evt-d"))
    ledger.requests.mark_needs_reconciliation("e", "w1", "gave up")

    # When they are counted
    counts = ledger.requests.count_by_status()

    # Then each status has its number
    assert counts == {
        "received": 1,
        "attempting": 1,
        "succeeded": 2,
        "needs_reconciliation": 1,
    }


def test_count_attempt_counts_up_from_one(ledger: Ledger) -> None:
    # Given a claimed request
    ledger.requests.claim(a_command(), "w1", LEASE)

    # When two attempts are counted
    # Then they are numbered 1 and 2
    assert [ledger.requests.count_attempt("req-1", "w1") for _ in range(2)] == [1, 2]


def test_attempts_after_the_first_are_counted_on_from_begin_attempt(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request whose attempt began (counting attempt 1) at t0
    t0 = clock.now
    ledger.requests.claim(a_command(), "w1", LEASE)
    assert begin(ledger) == 1

    # When a later retry counts its attempt
    clock.advance(30)
    again = ledger.requests.count_attempt("req-1", "w1")

    # Then it is attempt 2, and the key's 24 h still start at the first attempt
    record = ledger.requests.get("req-1")
    assert record is not None
    assert (again, record.attempts, record.first_attempt_at) == (2, 2, t0)


# --- the audit trail ------------------------------------------------------------------------


def test_every_transition_of_a_request_leaves_an_audit_row(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a request claimed, begun and succeeded, a second apart
    start = clock.now
    ledger.requests.claim(a_command(), "w1", LEASE)
    clock.advance(1)
    ledger.requests.claim(a_command(), "w1", LEASE)  # a resume is not a transition
    begin(ledger)
    clock.advance(1)
    ledger.requests.record_succeeded("req-1", "w1", Success("py_1", None, None), an_event())

    # When its history is read
    history = ledger.history("request", "req-1")

    # Then there is one row per transition, with its time, actor and details
    assert [(e.action, e.actor) for e in history] == [
        ("received", "w1"),
        ("attempting", "w1"),
        ("succeeded", "w1"),
    ]
    assert [e.at for e in history] == [
        start,
        start + timedelta(seconds=1),
        start + timedelta(seconds=2),
    ]
    assert history[1].detail == {"idempotency_key": idempotency_key("req-1")}
    assert history[2].detail == {"payment_id": "py_1"}


def test_a_failure_is_audited_with_its_code_and_message(ledger: Ledger) -> None:
    # Given a received request
    ledger.requests.claim(a_command(), "w1", LEASE)

    # When its refusal is recorded
    ledger.requests.record_failed(
        "req-1",
        "w1",
        code="consent_missing",
        message="no consent",
        stripe_error=None,
        event=an_event(),
    )

    # Then the audit row says which code, and the ledger keeps the message
    last = ledger.history("request", "req-1")[-1]
    assert (last.action, last.detail) == (
        "failed",
        {"failure_code": "consent_missing", "failure_message": "no consent"},
    )


# --- consents -------------------------------------------------------------------------------


def test_a_consent_is_active_from_its_grant_until_its_revocation(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a consent granted at t0 and revoked an hour later
    t0 = clock.now
    ledger.consents.grant(ACCOUNT_ID, "agreements/1.pdf", "ops")
    clock.advance(3600)
    revoked = ledger.consents.revoke(ACCOUNT_ID, "ops")
    t1 = clock.now

    # When it is looked up at various times
    # Then it is active only in [t0, t1)
    assert revoked == 1
    assert ledger.consents.active(ACCOUNT_ID, t0 - timedelta(seconds=1)) is None
    at_grant = ledger.consents.active(ACCOUNT_ID, t0)
    assert at_grant is not None
    assert (at_grant.agreement_ref, at_grant.revoked_at) == ("agreements/1.pdf", t1)
    assert ledger.consents.active(ACCOUNT_ID, t1 - timedelta(microseconds=1)) is not None
    assert ledger.consents.active(ACCOUNT_ID, t1) is None
    assert ledger.consents.active("acct_1Someone", t0) is None


def test_a_new_grant_after_a_revocation_is_the_active_consent(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a consent revoked, then granted again under a new agreement
    ledger.consents.grant(ACCOUNT_ID, "agreements/1.pdf", "ops")
    clock.advance(10)
    ledger.consents.revoke(ACCOUNT_ID, "ops")
    clock.advance(10)
    ledger.consents.grant(ACCOUNT_ID, "agreements/2.pdf", "ops")

    # When the active consent is asked for now
    active = ledger.consents.active(ACCOUNT_ID, clock.now)

    # Then it is the new one, and both are listed
    assert active is not None
    assert active.agreement_ref == "agreements/2.pdf"
    assert [c.agreement_ref for c in ledger.consents.list(ACCOUNT_ID)] == [
        "agreements/1.pdf",
        "agreements/2.pdf",
    ]


def test_consent_lookups_compare_instants_whatever_the_time_zone(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a consent granted at 12:00 UTC
    ledger.consents.grant(ACCOUNT_ID, "agreements/1.pdf", "ops")
    paris = timezone(timedelta(hours=1))

    # When asked at 12:30 Paris time (11:30 UTC, before the grant) and 13:30 Paris (12:30 UTC)
    before = ledger.consents.active(ACCOUNT_ID, clock.now.astimezone(paris) - timedelta(minutes=30))
    after = ledger.consents.active(ACCOUNT_ID, clock.now.astimezone(paris) + timedelta(minutes=30))

    # Then only the second finds it
    assert before is None
    assert after is not None


def test_grants_and_revocations_are_audited(ledger: Ledger) -> None:
    # Given a grant and a revocation
    ledger.consents.grant(ACCOUNT_ID, "agreements/1.pdf", "alice")
    ledger.consents.revoke(ACCOUNT_ID, "bob")

    # When the account's consent history is read
    history = ledger.history("consent", ACCOUNT_ID)

    # Then both are there, with who did them
    assert [(e.action, e.actor, e.detail) for e in history] == [
        ("granted", "alice", {"agreement_ref": "agreements/1.pdf"}),
        ("revoked", "bob", {"consents_revoked": 1}),
    ]


# --- time -----------------------------------------------------------------------------------


def test_datetimes_come_back_timezone_aware_in_utc(ledger: Ledger, clock: FakeClock) -> None:
    # Given a clock in another zone
    clock.now = datetime(2026, 11, 15, 14, 0, tzinfo=timezone(timedelta(hours=2)))

    # When a request and a consent are written and read back
    ledger.requests.claim(a_command(), "w1", LEASE)
    ledger.consents.grant(ACCOUNT_ID, "agreements/1.pdf", "ops")
    record = ledger.requests.get("req-1")
    consent = ledger.consents.active(ACCOUNT_ID, clock.now)

    # Then every datetime is aware, in UTC, and the same instant
    assert record is not None
    assert consent is not None
    for value in (record.received_at, record.updated_at, record.lease_until, consent.granted_at):
        assert value is not None
        assert value.tzinfo is UTC
    assert record.received_at == datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
    assert ledger.history("request", "req-1")[0].at.tzinfo is UTC


def test_a_naive_datetime_is_refused_by_the_ledger(ledger: Ledger, clock: FakeClock) -> None:
    # Given a ledger whose clock forgot its zone
    clock.now = datetime(2026, 11, 15, 12, 0)

    # When a request is claimed
    # Then the write is refused rather than stored ambiguously
    with pytest.raises(StatementError, match="naive datetimes"):
        ledger.requests.claim(a_command(), "w1", LEASE)
