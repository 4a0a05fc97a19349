"""The ledger's side of a day the sandbox generated in bulk (`SandboxAdmin.generate_day`):
request `{prefix}-{i}` succeeded, charged by `py_{prefix}{i:08d}` at that charge's `created`,
as the worker would have recorded it. Written with one COPY, so a million rows take
seconds instead of the hours a million debits through the worker would.

Only `debit_requests` is written: the daily proof reads nothing else (no audit entries or
outbox rows are made for these requests).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta

import psycopg

from worker.adapters.ledger.tables import Status
from worker.domain.types import idempotency_key
from worker.sandbox.bulk import SECONDS_PER_DAY, BulkDay

COLUMNS = (
    "request_id", "fingerprint", "account", "amount", "currency", "reason", "command",
    "status", "idempotency_key", "attempts", "payment_id", "transfer_id",
    "balance_transaction", "received_at", "updated_at", "finished_at", "first_attempt_at",
    "charged_at", "producer",
)  # fmt: skip
REASON = "platform_charge"
PRODUCER = "benchmark"
# DebitRequested.fingerprint()'s canonical JSON (sorted keys, no spaces) for a command with
# no refund, description or metadata; the ids are pattern-checked, so none needs escaping.
_CANONICAL = (
    '{{"account":"{account}","amount":{amount},"currency":"{currency}","description":null,'
    '"metadata":{{}},"reason":"{reason}","refund":null,"request_id":"{request_id}"}}'
)


def charged_at(spec: BulkDay, index: int) -> datetime:
    """When the sandbox says charge `index` of the day was created."""
    start = datetime.combine(spec.day, time(), tzinfo=UTC)
    return start + timedelta(seconds=index * SECONDS_PER_DAY // spec.count)


def command(spec: BulkDay, index: int) -> dict[str, object]:
    """The command of request `index`, as the ledger stores it (`model_dump(mode="json")`)."""
    return {
        "request_id": f"{spec.prefix}-{index}",
        "account": spec.accounts[index % len(spec.accounts)],
        "amount": spec.amount,
        "currency": spec.currency,
        "reason": REASON,
        "refund": None,
        "description": None,
        "metadata": {},
        "requested_at": None,
    }


def rows(spec: BulkDay) -> Iterator[tuple[object, ...]]:
    """Each request's row, in COLUMNS' order."""
    for index in range(spec.count):
        cmd = command(spec, index)
        suffix = f"{spec.prefix}{index:08d}"
        canonical = _CANONICAL.format(**cmd)
        at = charged_at(spec, index)
        yield (
            cmd["request_id"],
            hashlib.sha256(canonical.encode()).hexdigest(),
            cmd["account"],
            spec.amount,
            spec.currency,
            REASON,
            json.dumps(cmd),
            str(Status.SUCCEEDED),
            idempotency_key(str(cmd["request_id"])),
            1,
            f"py_{suffix}",
            f"tr_{suffix}",
            f"txn_{suffix}",
            at,
            at,
            at,
            at,
            at,
            PRODUCER,
        )


def seed(database_url: str, spec: BulkDay) -> None:
    """Write the day's requests, then ANALYZE, so the proof's range read is planned as on a
    table autovacuum keeps analysed."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        with conn.cursor() as cursor:
            statement = f"COPY debit_requests ({', '.join(COLUMNS)}) FROM STDIN"
            with cursor.copy(statement) as copy:
                for row in rows(spec):
                    copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE debit_requests")
