"""What one debit costs the ledger: SQL statements and transactions on the happy path, on a
real SQLite ledger. Regression guards for issue #7 (throughput): each transition is still one
guarded transaction, but nothing is read back that the transaction already knows."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import SUCCEEDED_TYPE
from worker.adapters.ledger import Status
from worker.domain.producer_limits import ProducerPolicy
from worker.handlers import Result

from .fakes import SqlLog, World, a_body, a_world, an_authenticator, sql_counted

# claim: INSERT request + audit; consent read; begin attempt (counts attempt 1): UPDATE …
# RETURNING + audit; outcome: UPDATE … RETURNING + outbox INSERT … RETURNING + audit;
# the event marked sent. (Before issue #7: 15 statements, 5 write transactions, 7 in all.)
STATEMENTS = 9
WRITE_TRANSACTIONS = 3  # claim, begin attempt, outcome + outbox
TRANSACTIONS = 3  # the write transactions; nothing else opens a transaction block
# The consent read and the event marked sent are one statement each: they run as their own
# transaction, without a BEGIN and a COMMIT (or ROLLBACK) round trip around them.
SINGLE_STATEMENTS = 2
# A signed command also reserves the producer's daily room while the attempt begins: lock
# upsert, one read of what is already reserved, the reservation. (Before: 20 statements.)
SIGNED_STATEMENTS = STATEMENTS + 3


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


def assert_fully_recorded(world: World) -> None:
    """The cheaper path still leaves the whole record: outcome, audit trail, sent event."""
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.attempts, record.payment_id) == (
        Status.SUCCEEDED,
        1,
        "py_Fake1",
    )
    assert record.first_attempt_at is not None
    assert [e.action for e in world.ledger.history("request", "req-1")] == [
        "received",
        "attempting",
        "succeeded",
    ]
    assert [e.event_type for e in world.publisher.published] == [SUCCEEDED_TYPE]
    assert [p.sent for p in world.ledger.outbox.for_request("req-1")] == [True]


def one_counted_debit(world: World) -> tuple[Result, SqlLog]:
    """Handle one permitted debit, counting the SQL its ledger is asked."""
    with sql_counted(world.ledger.engine) as sql:
        result = world.handle(a_body())
    return result, sql


def test_one_permitted_debit_costs_at_most_nine_statements_in_three_write_transactions(
    world: World,
) -> None:
    # Given a debitable account with consent, and the ledger's SQL being counted
    # When one debit is handled and succeeds
    result, sql = one_counted_debit(world)

    # Then it cost no more than the statements and transactions each step needs
    assert result is Result.SUCCEEDED
    assert len(sql.statements) <= STATEMENTS, f"{len(sql.statements)} statements:\n{sql}"
    assert sql.committed <= WRITE_TRANSACTIONS, str(sql)
    assert sql.begun <= TRANSACTIONS, str(sql)
    assert sql.single <= SINGLE_STATEMENTS, str(sql)
    # And nothing was read back that a transaction had just written
    assert not [s for s in sql.statements if s.startswith("SELECT debit_requests.")], str(sql)
    assert not [s for s in sql.statements if s.startswith("SELECT outbox.")], str(sql)
    assert_fully_recorded(world)


def test_a_signed_debit_adds_only_its_daily_reservation_to_the_cost(world: World) -> None:
    # Given a producer with a daily maximum, whose signed command is being counted
    world.auth = an_authenticator(ProducerPolicy(max_per_day={"usd": 10_000}))
    with sql_counted(world.ledger.engine) as sql:
        # When it is handled and succeeds
        result = world.handle(a_body())

    # Then the reservation costs three statements inside the attempt's own transaction
    assert result is Result.SUCCEEDED
    assert len(sql.statements) <= SIGNED_STATEMENTS, f"{len(sql.statements)} statements:\n{sql}"
    assert sql.committed <= WRITE_TRANSACTIONS, str(sql)
    assert sql.begun <= TRANSACTIONS, str(sql)
    assert_fully_recorded(world)
