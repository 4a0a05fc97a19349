"""The ledger on a real PostgreSQL: its whole contract (tests/unit/test_ledger.py, collected
again below), and what SQLite cannot show (psycopg's rowcount, a debit's five statements),
with the handler's fakes around it. Each test gets its own database, so no
running worker's janitor or relay ever sees these rows."""

from __future__ import annotations

import inspect
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
from worker.adapters.ledger import ClaimKind, Ledger
from worker.adapters.ledger.database import make_engine, single_statements
from worker.domain.types import OutboxEvent
from worker.handlers import Result

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


# The ledger's contract (tests/unit/test_ledger.py) on PostgreSQL: every test of it that takes
# the `ledger` fixture runs here again against this module's fixtures, collected under the
# name test_on_postgresql_…, so both databases are held to the same behaviour.
CONTRACT = [
    test
    for name, test in vars(ledger_tests).items()
    if name.startswith("test_") and "ledger" in inspect.signature(test).parameters
]
for _test in CONTRACT:
    globals()[_test.__name__.replace("test_", "test_on_postgresql_", 1)] = _test
