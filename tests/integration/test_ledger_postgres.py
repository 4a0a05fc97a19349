"""The ledger on a real PostgreSQL: what SQLite cannot show (psycopg's rowcount, RETURNING on
PostgreSQL), with the handler's fakes around it. Each test gets its own database, so no
running worker's janitor or relay ever sees these rows."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from schemas.commands import DebitRequested
from tests.integration.conftest import own_database
from tests.unit import test_ledger as ledger_tests
from tests.unit.fakes import ACCOUNT_ID, FakeClock, a_world_on
from tests.unit.test_ledger_cost import (
    SINGLE_STATEMENTS,
    STATEMENTS,
    WRITE_TRANSACTIONS,
    assert_fully_recorded,
    one_counted_debit,
)
from worker.handlers import Result
from worker.ledger import ClaimKind, Ledger, OutboxEvent
from worker.ledger.database import make_engine, single_statements

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> Iterator[Engine]:
    for url in own_database():  # migrated; dropped when the loop resumes it
        engine = make_engine(url, pool_size=2)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(engine: Engine, clock: FakeClock) -> Ledger:
    return Ledger.on(engine, clock)


def a_command(request_id: str = "req-1") -> DebitRequested:
    return DebitRequested.model_validate(
        {
            "request_id": request_id,
            "account": ACCOUNT_ID,
            "amount": 2500,
            "currency": "usd",
            "reason": "platform_charge",
        }
    )


def test_a_first_claim_on_postgresql_is_new_and_audited_as_received(ledger: Ledger) -> None:
    # Given an empty ledger on PostgreSQL
    # When a command is claimed, then claimed again by its owner
    first = ledger.requests.claim(a_command(), "w1", 60.0)
    stored = ledger.requests.get("req-1")
    second = ledger.requests.claim(a_command(), "w1", 60.0)

    # Then the first claim is new (its insert is seen as one: psycopg's rowcount of an INSERT
    # once read as -1 made every claim look like a resume), audited, and its record is the
    # row as stored; the second resumes
    assert (first.kind, second.kind) == (ClaimKind.NEW, ClaimKind.RESUMED)
    assert first.record == stored
    assert [e.action for e in ledger.history("request", "req-1")] == ["received"]


def test_an_outbox_event_added_twice_on_postgresql_is_written_once(ledger: Ledger) -> None:
    # Given an event / When it is added twice
    event = OutboxEvent("evt-1", "req-1", "test.event", "debit.test", "{}")
    added = (ledger.outbox.add(event), ledger.outbox.add(event))

    # Then the first add wrote it and the second saw it there
    assert added == (True, False)
    assert len(ledger.outbox.for_request("req-1")) == 1


# On PostgreSQL each write transaction of an ordinary debit is one statement outside a
# transaction block: the claim (row + audit), the start of the attempt (UPDATE + audit) and
# the success (outcome + outbox + audit). The consent read and the event marked sent are
# lone statements on either database.
PG_STATEMENTS = STATEMENTS - 4
PG_TRANSACTIONS = 0
PG_SINGLE_STATEMENTS = SINGLE_STATEMENTS + WRITE_TRANSACTIONS
PG_ROUND_TRIPS = 5  # each statement, plus a BEGIN and a COMMIT per transaction block


def test_a_permitted_debit_on_postgresql_costs_less_than_on_sqlite(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given a debitable account with consent, on a PostgreSQL ledger whose SQL is counted
    world = a_world_on(ledger, clock)
    # When one debit is handled and succeeds
    result, sql = one_counted_debit(world)

    # Then it costs less than on SQLite (every write is one statement), and leaves the
    # whole record. The statements are counted where psycopg sends them, so the count is
    # exact: a count that missed the statements run on psycopg directly would fail here.
    assert result is Result.SUCCEEDED
    assert len(sql.statements) == PG_STATEMENTS, f"{len(sql.statements)} statements:\n{sql}"
    assert sql.committed <= PG_TRANSACTIONS, str(sql)
    assert sql.begun <= PG_TRANSACTIONS, str(sql)
    assert sql.single <= PG_SINGLE_STATEMENTS, str(sql)
    assert len(sql.statements) + 2 * sql.begun <= PG_ROUND_TRIPS, str(sql)
    assert_fully_recorded(world)


def test_a_single_statement_opens_no_transaction_block_and_leaves_none_on_the_pool(
    engine: Engine,
) -> None:
    # Given the single-statement engine sharing the ledger's pool (two connections)
    single = single_statements(engine)
    # When a read runs on it, and then reads run on the ordinary engine from the same pool
    with single.connect() as conn:
        conn.execute(text("SELECT 1"))
        alone = conn.connection.driver_connection.info.transaction_status  # type: ignore[union-attr]
    after = []
    for _ in range(2):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            after.append(conn.connection.driver_connection.info.transaction_status)  # type: ignore[union-attr]

    # Then PostgreSQL saw no BEGIN for the lone read (the session is idle, not in a
    # transaction), and every connection handed back to the pool opens transactions again
    assert alone == psycopg.pq.TransactionStatus.IDLE
    assert after == [psycopg.pq.TransactionStatus.INTRANS] * 2


def test_a_lone_write_is_committed_at_once(ledger: Ledger, engine: Engine) -> None:
    # Given an unsent outbox event
    ledger.outbox.add(OutboxEvent("evt-1", "req-1", "test.event", "debit.test", "{}"))
    [pending] = ledger.outbox.for_request("req-1")
    # When it is marked sent (one statement, no transaction block)
    ledger.outbox.mark_sent(pending.row_id)
    # Then another session sees it sent: it was committed although nothing sent a COMMIT (on
    # an ordinary connection, the same block without commit() would have rolled it back)
    with psycopg.connect(
        engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")
    ) as other:
        row = other.execute("SELECT sent_at FROM outbox WHERE event_id = 'evt-1'").fetchone()
    assert row is not None
    assert row[0] is not None


# A success is recorded on PostgreSQL by a statement of its own (outcome, outbox row and audit
# entry at once): the behaviour SQLite's transaction is held to, run here against it.
test_on_postgresql_an_outcome_is_recorded_once_with_one_outbox_row = (
    ledger_tests.test_an_outcome_is_recorded_once_with_one_outbox_row
)
test_on_postgresql_an_outcome_whose_event_is_already_in_the_outbox_names_that_row = (
    ledger_tests.test_an_outcome_whose_event_is_already_in_the_outbox_names_that_row
)
test_on_postgresql_a_failure_cannot_be_recorded_over_a_success = (
    ledger_tests.test_a_failure_cannot_be_recorded_over_a_success
)
test_on_postgresql_a_finished_request_is_claimed_as_finished = (
    ledger_tests.test_a_finished_request_is_claimed_as_finished
)
test_on_postgresql_every_transition_of_a_request_leaves_an_audit_row = (
    ledger_tests.test_every_transition_of_a_request_leaves_an_audit_row
)
test_on_postgresql_a_finished_request_is_never_marked_for_reconciliation = (
    ledger_tests.test_a_finished_request_is_never_marked_for_reconciliation
)

# The first claim and the start of an attempt that reserves nothing are statements of their
# own on PostgreSQL too; a request seen before, and an attempt that reserves a refund's or a
# producer's room, take the transaction. Both paths, and the batched marking of sent events
# (psycopg's array parameter), are held to SQLite's behaviour here, each test collected again
# under the name test_on_postgresql_….
_ALSO_ON_POSTGRESQL = (
    "test_the_first_claim_of_a_request_is_new_and_holds_a_lease",
    "test_a_new_claims_record_is_the_row_as_the_ledger_stored_it",
    "test_a_resumed_claim_returns_the_row_with_its_new_lease",
    "test_another_owner_is_busy_while_the_lease_holds_and_resumes_once_it_expired",
    "test_other_content_under_a_known_request_id_is_a_conflict",
    "test_begin_attempt_moves_a_received_request_to_attempting_with_its_key",
    "test_begin_attempt_refuses_a_worker_that_does_not_hold_the_lease",
    "test_begin_attempt_happens_only_once",
    "test_an_escalated_request_that_never_reached_stripe_goes_through_the_rules_on_replay",
    "test_attempts_after_the_first_are_counted_on_from_begin_attempt",
    "test_the_refund_budget_reserves_each_recovery_and_refuses_to_go_past_the_refund",
    "test_the_producers_daily_room_is_reserved_once_per_request_and_refused_past_the_limit",
    "test_rows_marked_sent_together_are_each_marked_once_and_others_stay_unsent",
)
for _name in _ALSO_ON_POSTGRESQL:
    globals()[_name.replace("test_", "test_on_postgresql_", 1)] = getattr(ledger_tests, _name)
