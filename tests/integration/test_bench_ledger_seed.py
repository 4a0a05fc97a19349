"""The benchmark's ledger seeding (bench/ledger_seed.py) on a real PostgreSQL: each clone of a
request the worker finished is a request of its own, as the worker would have stored it,
with its audit entries and its sent event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from bench import ledger_seed
from schemas.commands import DebitRequested
from tests.integration.conftest import own_database
from tests.unit.fakes import FakeClock, a_body, a_world_on
from worker.adapters.ledger import Ledger, Status
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.tables import audit_log, debit_requests, outbox

pytestmark = pytest.mark.integration
CLONES = 1200


@pytest.fixture
def url() -> Iterator[str]:
    yield from own_database()


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url, pool_size=2)
    try:
        yield engine
    finally:
        engine.dispose()


def test_each_clone_is_a_finished_request_with_its_own_ids_entries_and_sent_event(
    url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a request the worker finished (its row, audit entries and sent event)
    clock = FakeClock(datetime.now(UTC) - timedelta(hours=1))
    world = a_world_on(Ledger.on(engine, clock), clock)
    world.handle(a_body(metadata={"invoice": "in_1"}))
    template = ledger_seed.template_request(url)
    assert template == "req-1"
    with engine.connect() as conn:
        entries = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.entity_id == template)
        ).scalar_one()

    # When 1,200 clones are seeded, in chunks of 500, received before `until`
    monkeypatch.setattr(ledger_seed, "CHUNK", 500)
    until = datetime.now(UTC)
    ledger_seed.seed(url, template, CLONES, until, say=lambda _: None)

    # Then each clone is a succeeded request whose stored command is its own
    with engine.connect() as conn:
        rows = conn.execute(
            select(debit_requests).where(debit_requests.c.request_id != template)
        ).mappings()
        clones = {row["request_id"]: row for row in rows}
        events = (
            conn.execute(select(outbox).where(outbox.c.request_id != template)).mappings().all()
        )
        cloned_entries = conn.execute(
            select(func.count())
            .select_from(audit_log)
            .where(audit_log.c.entity == "request", audit_log.c.entity_id != template)
        ).scalar_one()
    assert len(clones) == CLONES
    for request_id, row in clones.items():
        command = DebitRequested.model_validate(row["command"])
        assert (command.request_id, command.account) == (request_id, row["account"])
        assert row["status"] == Status.SUCCEEDED
    # And each has a fingerprint of its own, of a real one's size (a hash of its id: nothing
    # redelivers a seeded command, which is the only reader of it)
    fingerprints = {row["fingerprint"] for row in clones.values()}
    assert len(fingerprints) == CLONES
    assert {len(f) for f in fingerprints} == {
        len(DebitRequested.model_validate(json.loads(a_body())).fingerprint())
    }
    # And received one after the other at the seeding rate, the last at `until`
    received = sorted(row["received_at"] for row in clones.values())
    assert received[-1] == until
    assert received[-1] - received[-2] == timedelta(seconds=1 / ledger_seed.SEED_RATE)
    # And each has its template's audit entries, and one sent event naming it, with its own id
    assert cloned_entries == entries * CLONES
    assert len({event["event_id"] for event in events}) == len(events) == CLONES
    for event in events:
        body = json.loads(event["body"])
        assert (body["id"], body["subject"]) == (event["event_id"], event["request_id"])
        assert body["data"]["account"] == clones[event["request_id"]]["account"]
        assert event["sent_at"] is not None
