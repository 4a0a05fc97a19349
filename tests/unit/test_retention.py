"""The retention on a real SQLite ledger: which rows go (sent events and reservations past
the retention, in batches), which stay (unsent events, audit entries, requests), and a
finished request whose event went still answers a redelivered command with the same event.

The same contract on PostgreSQL, with its lock and SKIP LOCKED: tests/integration/
test_retention_postgres.py."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, Table, func, select

from schemas.codes import FailureCode
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.producer_budgets import reserve
from worker.adapters.ledger.tables import audit_log, debit_requests, outbox, producer_reservations
from worker.domain.types import DailyLimit, OutboxEvent
from worker.handlers import Result
from worker.ops.retention import RetentionRound, retention_once

from .fakes import FakeClock, FakeMonotonic, a_body, a_world_on, migrated_ledger, stripe_refusal

DAY = 86_400.0
WEEK = 7 * DAY


class TickingClock(FakeClock):
    """A FakeClock that moves on a microsecond each time it is read, as a real one does: the
    handler's and the ledger's readings of one outcome differ."""

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


def an_event(number: int, request_id: str = "req-1") -> OutboxEvent:
    return OutboxEvent(f"evt-{number}", request_id, "test.event", "debit.test", "{}")


def add_sent(ledger: Ledger, number: int) -> None:
    ledger.outbox.add(an_event(number))
    (row,) = [
        p.row_id for p in ledger.outbox.for_request("req-1") if p.event.event_id == f"evt-{number}"
    ]
    ledger.outbox.mark_sent(row)


def event_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            str(i) for i in conn.execute(select(outbox.c.event_id).order_by(outbox.c.id)).scalars()
        ]


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# --- what goes, what stays ------------------------------------------------------------------


def test_sent_events_older_than_the_retention_are_removed_and_younger_ones_stay(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given two events sent eight days ago, and one sent six days ago
    add_sent(ledger, 1)
    add_sent(ledger, 2)
    clock.advance(2 * DAY)
    add_sent(ledger, 3)
    clock.advance(6 * DAY)

    # When a round runs with a retention of seven days
    done = retention_once(ledger.engine, clock(), WEEK, sleep=lambda _: None)

    # Then only the two older events are gone
    assert done == RetentionRound(ran=True, events=2, reservations=0, complete=True)
    assert event_ids(ledger.engine) == ["evt-3"]


def test_an_unsent_event_stays_however_old_it_is(ledger: Ledger, clock: FakeClock) -> None:
    # Given an event never sent (the broker away), a year old
    ledger.outbox.add(an_event(1))
    clock.advance(365 * DAY)

    # When a round runs
    done = retention_once(ledger.engine, clock(), WEEK, sleep=lambda _: None)

    # Then it is still there, for the relay
    assert (done.events, event_ids(ledger.engine)) == (0, ["evt-1"])
    assert ledger.outbox.count_unsent() == 1


def test_requests_and_their_audit_entries_stay_when_their_events_go(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Given a request that succeeded (its request row, audit entries and sent event)
    world = a_world_on(migrated_ledger(tmp_path, clock, "world"), clock)
    world.handle(a_body())
    entries = count(world.ledger.engine, audit_log)

    # When a round runs eight days later
    clock.advance(8 * DAY)
    done = retention_once(world.ledger.engine, clock(), WEEK, sleep=lambda _: None)

    # Then its event is gone, and its request and every audit entry are still there
    assert done.events == 1
    assert count(world.ledger.engine, outbox) == 0
    assert count(world.ledger.engine, debit_requests) == 1
    assert count(world.ledger.engine, audit_log) == entries > 0


def test_a_retention_of_zero_keeps_everything(ledger: Ledger, clock: FakeClock) -> None:
    # Given an event sent a year ago
    add_sent(ledger, 1)
    clock.advance(365 * DAY)

    # When a round runs with the retention off
    done = retention_once(ledger.engine, clock(), 0)

    # Then nothing ran and the event stays
    assert done == RetentionRound(ran=False)
    assert event_ids(ledger.engine) == ["evt-1"]


# --- batches --------------------------------------------------------------------------------


def test_rows_go_in_batches_and_a_round_whose_time_ran_out_leaves_the_rest_to_the_next(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given five old sent events, and a round that may run for one batch only
    for number in range(5):
        add_sent(ledger, number)
    clock.advance(8 * DAY)
    monotonic = FakeMonotonic()

    def a_second_passes(_: float) -> None:  # the pause after each full batch
        monotonic.now += 1

    # When a round with batches of two and 1.5 s of time runs (a second passing per batch)
    first = retention_once(
        ledger.engine,
        clock(),
        WEEK,
        batch=2,
        round_seconds=1.5,
        monotonic=monotonic,
        sleep=a_second_passes,
    )

    # Then two batches went (the second began within the time), and the fifth event waits
    assert first == RetentionRound(ran=True, events=4, reservations=0, complete=False)
    assert event_ids(ledger.engine) == ["evt-4"]

    # And the next round removes it
    second = retention_once(ledger.engine, clock(), WEEK, batch=2, sleep=lambda _: None)
    assert second == RetentionRound(ran=True, events=1, reservations=0, complete=True)
    assert event_ids(ledger.engine) == []


# --- producers' reservations ----------------------------------------------------------------


def reserve_now(ledger: Ledger, clock: FakeClock, request_id: str) -> None:
    with ledger.engine.begin() as conn:
        reserve(conn, request_id, DailyLimit("billing", "usd", 10**9), 100, clock())


def reserved(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(producer_reservations.c.request_id).order_by("request_id"))
        return [str(r) for r in rows.scalars()]


def test_a_reservation_goes_after_the_retention_and_never_within_its_day(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given reservations made 30 h, and 20 h, ago
    reserve_now(ledger, clock, "req-old")
    clock.advance(10 * 3600)
    reserve_now(ledger, clock, "req-young")
    clock.advance(20 * 3600)

    # When a round runs with a retention of one hour (shorter than the day they count in)
    done = retention_once(ledger.engine, clock(), 3600, sleep=lambda _: None)

    # Then only the one past its day is gone
    assert done.reservations == 1
    assert reserved(ledger.engine) == ["req-young"]


# --- a finished request's event after the retention -------------------------------------------


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_redelivered_command_gets_the_same_event_after_the_retention_removed_it(
    tmp_path: Path, outcome: str
) -> None:
    # Given a request that finished (on a clock that moves at every reading), its event sent
    clock = TickingClock()
    world = a_world_on(migrated_ledger(tmp_path, clock), clock)
    if outcome == "failed":
        world.stripe.fail_next(stripe_refusal(FailureCode.STRIPE_REJECTED, "card_declined"))
    world.handle(a_body())
    (first,) = world.publisher.published

    # And the retention removed its event from the outbox eight days later
    clock.advance(8 * DAY)
    assert retention_once(world.ledger.engine, clock(), WEEK, sleep=lambda _: None).events == 1
    assert world.ledger.outbox.for_request("req-1") == []

    # When its command is redelivered
    result = world.handle(a_body(), owner="worker-2")

    # Then the same event (same id, same body) is published again, and recorded as sent
    assert result is Result.REEMITTED
    assert world.publisher.published == [first, first]
    (again,) = world.ledger.outbox.for_request("req-1")
    assert (again.event, again.sent) == (first, True)
