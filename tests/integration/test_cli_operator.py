"""An operator's day on PostgreSQL: consents imported in bulk and granted once however often
or concurrently they are granted, requests found by status, account, producer and age."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Table, func, select

from schemas.commands import DebitRequested
from tests.integration.conftest import own_database
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.consents import ConsentGrant
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.tables import audit_log, consents
from worker.ops.cli import main

pytestmark = pytest.mark.integration

ROWS = 10_000


@pytest.fixture
def database() -> Iterator[str]:
    yield from own_database()


@pytest.fixture
def ledger(database: str) -> Ledger:
    return Ledger.on(make_engine(database, pool_size=8))


def cli(args: list[str], database: str) -> Result:
    return CliRunner().invoke(main, args, env={"DEBIT_WORKER_DATABASE_URL": database})


def count(ledger: Ledger, table: Table) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_ten_thousand_consents_are_imported_once_in_one_process(
    database: str, ledger: Ledger, tmp_path: Path
) -> None:
    # Given a file of 10,000 consents
    csv = tmp_path / "consents.csv"
    lines = [f"acct_1Bulk{n:010d},agreements/{n}.pdf" for n in range(ROWS)]
    csv.write_text("account,agreement\n" + "\n".join(lines) + "\n")
    # When it is imported, then imported again
    began = time.perf_counter()
    first = cli(["consent", "import", str(csv), "--by", "ops"], database)
    seconds = time.perf_counter() - began
    second = cli(["consent", "import", str(csv), "--by", "ops"], database)
    # Then every consent is granted and audited once, and each run says what it did
    assert first.exit_code == 0, first.output
    assert f"granted {ROWS}, already had 0" in first.output
    assert f"granted 0, already had {ROWS}" in second.output
    assert count(ledger, consents) == ROWS
    assert count(ledger, audit_log) == ROWS
    print(f"\n{ROWS} consents imported in {seconds:.1f} s")  # the measurement, with -s


def test_concurrent_grants_of_one_consent_record_it_once(ledger: Ledger) -> None:
    # Given eight operators granting the same consent at the same moment
    grant = [ConsentGrant("acct_1Twice", "agreements/1.pdf", "ops")]
    # When they all run
    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(lambda _: ledger.consents.grant_many(grant), range(8)))
    # Then exactly one of them recorded it
    assert sorted(d.granted for d in done) == [0] * 7 + [1]
    assert len(ledger.consents.list("acct_1Twice")) == 1


def test_revoking_without_consent_fails_and_with_consent_succeeds(
    database: str, ledger: Ledger
) -> None:
    nobody = cli(["consent", "revoke", "acct_1NoConsent", "--by", "ops"], database)
    ledger.consents.grant("acct_1HasConsent", "agreements/1.pdf", "ops")
    somebody = cli(["consent", "revoke", "acct_1HasConsent", "--by", "ops"], database)
    assert nobody.exit_code == 1
    assert "has no active consent: nothing revoked" in nobody.output
    assert somebody.exit_code == 0
    assert "revoked 1 active consent(s) of acct_1HasConsent" in somebody.output


def _claim(ledger: Ledger, request_id: str, account: str, producer: str) -> None:
    command = DebitRequested.model_validate(
        {
            "request_id": request_id,
            "account": account,
            "amount": 700,
            "currency": "usd",
            "reason": "platform_charge",
        }
    )
    ledger.requests.claim(command, "op-test", 60.0, producer=producer)


def test_requests_are_found_by_account_producer_state_and_age(
    database: str, ledger: Ledger
) -> None:
    # Given requests of two accounts from two producers
    for request_id, account, producer in [
        ("op-1", "acct_1OpA", "shop"),
        ("op-2", "acct_1OpB", "shop"),
        ("op-3", "acct_1OpA", "billing"),
    ]:
        _claim(ledger, request_id, account, producer)
        time.sleep(0.01)  # distinct receipt times, newest last

    def ids(*options: str) -> list[str]:
        result = cli(["requests", "list", "--json", *options], database)
        assert result.exit_code == 0, result.output
        return [row["request_id"] for row in json.loads(result.output)]

    # When they are listed by each filter / Then newest first, only those that match
    assert ids("--account", "acct_1OpA") == ["op-3", "op-1"]
    assert ids("--producer", "shop") == ["op-2", "op-1"]
    assert ids("--state", "received", "--since", "1h") == ["op-3", "op-2", "op-1"]
    assert ids("--state", "needs_reconciliation") == []
    assert ids("--since", "2999-01-01") == []


def test_status_of_several_requests_as_json(database: str, ledger: Ledger) -> None:
    _claim(ledger, "st-1", "acct_1StA", "shop")
    _claim(ledger, "st-2", "acct_1StB", "shop")
    result = cli(["status", "st-1", "st-2", "--json"], database)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [(row["request_id"], row["account"], row["amount"]) for row in shown] == [
        ("st-1", "acct_1StA", 700),
        ("st-2", "acct_1StB", 700),
    ]
