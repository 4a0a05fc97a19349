"""The retention on a real PostgreSQL: what SQLite cannot show. One process of all does a
round at a time (an advisory lock); a batch skips the rows a worker holds instead of waiting
for them; and a finished request whose sent event went still re-emits the same event.

Each test gets its own database, so no running worker's janitor, relay or retention sees
these rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from click import testing
from sqlalchemy import Engine, func, select, text

from schemas.codes import FailureCode
from tests.integration.conftest import own_database
from tests.unit.fakes import FakeClock, a_body, a_world_on, stripe_refusal
from tests.unit.test_retention import DAY, WEEK, TickingClock
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.retention_store import RetentionStore
from worker.adapters.ledger.tables import audit_log, outbox
from worker.domain.types import OutboxEvent
from worker.handlers import Result
from worker.ops.cli import main
from worker.ops.retention import RetentionRound, retention_once

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    yield from own_database()


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    # A lock wait fails after 2 s instead of hanging the test (as on a worker's connections).
    engine = make_engine(url, pool_size=2, lock_timeout_ms=2000)
    try:
        yield engine
    finally:
        engine.dispose()


def sent_events(ledger: Ledger, clock: FakeClock, count: int, prefix: str = "evt") -> None:
    for number in range(count):
        event_id = f"{prefix}-{number}"
        ledger.outbox.add(OutboxEvent(event_id, "req-1", "test.event", "debit.test", "{}"))
        (row,) = [
            p.row_id for p in ledger.outbox.for_request("req-1") if p.event.event_id == event_id
        ]
        ledger.outbox.mark_sent(row)


def event_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(i) for i in conn.execute(select(outbox.c.event_id)).scalars()}


def test_a_round_removes_the_old_sent_events_in_batches_and_nothing_else(engine: Engine) -> None:
    # Given a finished request (audit entries, a sent event), 25 events sent with it, and
    # an old event never sent, all eight days old; then three events sent a day ago
    clock = FakeClock()
    world = a_world_on(Ledger.on(engine, clock), clock)
    world.handle(a_body())
    sent_events(world.ledger, clock, 25)
    world.ledger.outbox.add(OutboxEvent("unsent", "req-1", "test.event", "debit.test", "{}"))
    clock.advance(7 * DAY)
    sent_events(world.ledger, clock, 3, prefix="young")
    clock.advance(DAY)
    with engine.connect() as conn:
        entries = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()

    # When a round runs in batches of ten
    done = retention_once(engine, clock(), WEEK, batch=10, sleep=lambda _: None)

    # Then the 26 old sent events went (three batches), and the rest stayed
    assert done == RetentionRound(ran=True, events=26, reservations=0, complete=True)
    assert event_ids(engine) == {"unsent", "young-0", "young-1", "young-2"}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == entries


def test_only_one_process_runs_a_round_at_a_time(url: str, engine: Engine) -> None:
    # Given an old sent event, and another process in the middle of its round (its turn held)
    clock = FakeClock()
    sent_events(Ledger.on(engine, clock), clock, 1)
    clock.advance(8 * DAY)
    other = make_engine(url, pool_size=1)
    try:
        with RetentionStore(other).turn() as held:
            assert held is not None

            # When this process's round comes
            skipped = retention_once(engine, clock(), WEEK)

            # Then it skips it, and removes nothing
            assert skipped == RetentionRound(ran=False)
            assert event_ids(engine) == {"evt-0"}

        # And once the other's round is over, the next round runs
        assert retention_once(engine, clock(), WEEK).events == 1
    finally:
        other.dispose()


def test_a_batch_skips_a_row_a_worker_holds_instead_of_waiting_for_it(
    url: str, engine: Engine
) -> None:
    # Given two old sent events, one of them locked by a worker's open transaction
    clock = FakeClock()
    sent_events(Ledger.on(engine, clock), clock, 2)
    clock.advance(8 * DAY)
    worker = make_engine(url, pool_size=1)
    try:
        with worker.begin() as conn:
            conn.execute(text("SELECT id FROM outbox WHERE event_id = 'evt-0' FOR UPDATE"))

            # When a round runs meanwhile (a wait would fail on the 2 s lock timeout)
            done = retention_once(engine, clock(), WEEK, sleep=lambda _: None)

            # Then it removed the other one and left the held one for a later round
            assert (done.events, event_ids(engine)) == (1, {"evt-0"})
    finally:
        worker.dispose()


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_redelivered_command_gets_the_same_event_after_the_retention_removed_it(
    engine: Engine, outcome: str
) -> None:
    # Given a request that finished on PostgreSQL (a clock that moves at every reading)
    clock = TickingClock()
    world = a_world_on(Ledger.on(engine, clock), clock)
    if outcome == "failed":
        world.stripe.fail_next(stripe_refusal(FailureCode.STRIPE_REJECTED, "card_declined"))
    world.handle(a_body(metadata={"invoice": "in_1"}, description="November fees"))
    (first,) = world.publisher.published

    # And its sent event removed by the retention eight days later
    clock.advance(8 * DAY)
    assert retention_once(engine, clock(), WEEK, sleep=lambda _: None).events == 1

    # When its command is redelivered
    result = world.handle(a_body(metadata={"invoice": "in_1"}, description="November fees"))

    # Then the same event, byte for byte, is published again
    assert result is Result.REEMITTED
    assert world.publisher.published == [first, first]
    assert world.ledger.outbox.count_unsent() == 0


def cli(args: list[str], url: str) -> testing.Result:
    return testing.CliRunner().invoke(main, args, env={"DEBIT_WORKER_DATABASE_URL": url})


def test_the_retention_command_removes_what_is_past_the_retention_and_says_how_much(
    url: str, engine: Engine
) -> None:
    # Given two events sent eight days ago and one sent an hour ago
    clock = FakeClock(datetime.now(UTC) - timedelta(days=8))
    ledger = Ledger.on(engine, clock)
    sent_events(ledger, clock, 2)
    clock.advance(8 * DAY - 3600)
    sent_events(ledger, clock, 1, prefix="young")

    # When an operator runs one round
    done = cli(["retention", "--once"], url)

    # Then the two old ones are gone, and it says so
    assert (done.exit_code, done.output) == (0, "removed 2 sent event(s) and 0 reservation(s)\n")
    assert event_ids(engine) == {"young-0"}


def test_the_retention_command_says_when_another_process_is_running_it(
    url: str, engine: Engine
) -> None:
    # Given a worker process in the middle of a retention round
    with RetentionStore(engine).turn() as held:
        assert held is not None

        # When an operator runs one round too
        done = cli(["retention", "--once"], url)

    # Then it exits 1 with one line saying what to do
    assert done.exit_code == 1
    assert done.output == (
        "Error: another process is running the retention now: run the command again later\n"
    )
