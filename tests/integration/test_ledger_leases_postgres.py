"""Short leases (tests/unit/test_ledger_leases.py) on a real PostgreSQL: every test of it that
takes the `ledger` fixture runs here again, collected as test_on_postgresql_…, so the
renewal's one statement, the fence and the take-over hold on both databases."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.integration.conftest import own_database
from tests.unit import test_ledger_leases as lease_tests
from tests.unit.fakes import FakeClock
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine

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


CONTRACT = [
    test
    for name, test in vars(lease_tests).items()
    if name.startswith("test_") and "ledger" in inspect.signature(test).parameters
]
for _test in CONTRACT:
    globals()[_test.__name__.replace("test_", "test_on_postgresql_", 1)] = _test
