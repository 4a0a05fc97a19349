"""A ledger at size, written in bulk: `count` finished requests cloned, inside PostgreSQL, from
one request the worker itself finished (its row, its audit entries and its sent outbox
event), so each clone has the bytes the worker writes. Ids, accounts, commands and event
bodies are made unique per clone; the times lie before `until`, spaced as debits at
`SEED_RATE` per second (10,000,000 debits: 4.6 days). INSERT … SELECT generate_series, in
chunks of one transaction each, a connection per table; then VACUUM ANALYZE (as autovacuum
keeps a live table) and a CHECKPOINT, so the load measured next pays for neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Final

import psycopg

from worker.adapters.ledger.tables import debit_requests

SEED_RATE: Final = 25.0  # debits/s the seeded history was made at
SEED_ACCOUNTS: Final = 10_000  # connected accounts the seeded requests are spread over
CHUNK: Final = 500_000
PREFIX: Final = "ledger-"

# Each clone's own values, from the template's (t) and the clone's number (i); the others
# are the template's (its Stripe ids too: nothing requires them unique, and their bytes are
# the real ones). `at` is when the clone was received; every other time keeps its distance
# from the template's receipt.
_NEW_ID = f"'{PREFIX}' || lpad(i::text, 10, '0')"
_NEW_ACCOUNT = f"'acct_1LedgerSeed' || lpad(mod(i, {SEED_ACCOUNTS})::text, 8, '0')"
_AT = "%(until)s - make_interval(secs => (%(count)s - i) / %(rate)s)"
_SHIFTED = {"received_at", "updated_at", "finished_at", "first_attempt_at", "charged_at"}
_REQUEST_VALUES: Final = {
    "request_id": "n.id",
    # Of the id, not of the command (its canonical JSON is the worker's): read only when a
    # command is redelivered, which no seeded one is.
    "fingerprint": "encode(sha256(convert_to(n.id, 'UTF8')), 'hex')",
    "account": "n.account",
    "command": "replace(replace(t.command::text, t.request_id, n.id), t.account, n.account)::json",
    "idempotency_key": "replace(t.idempotency_key, t.request_id, n.id)",
    **{name: f"n.at + (t.{name} - t.received_at)" for name in _SHIFTED},
}
_CLONES = f"""
    WITH n AS (
        SELECT i, {_NEW_ID} AS id, {_NEW_ACCOUNT} AS account, {_AT} AS at
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
    )
"""  # noqa: S608 - every part is a constant of this module


def _request_insert() -> str:
    names = [column.name for column in debit_requests.columns]
    values = [_REQUEST_VALUES.get(name, f"t.{name}") for name in names]
    columns, clones = ", ".join(names), ", ".join(values)
    insert = f"INSERT INTO debit_requests ({columns}) SELECT {clones}"
    return f"{_CLONES} {insert} FROM n, debit_requests t WHERE t.request_id = %(template)s"


_AUDIT_INSERT = f"""{_CLONES}
    INSERT INTO audit_log (at, entity, entity_id, action, actor, detail)
    SELECT n.at + (a.at - t.received_at), a.entity, n.id, a.action, a.actor, a.detail
    FROM n, debit_requests t JOIN audit_log a
        ON a.entity = 'request' AND a.entity_id = t.request_id
    WHERE t.request_id = %(template)s
    ORDER BY n.i, a.id
"""  # noqa: S608 - constants
_OUTBOX_INSERT = f"""{_CLONES}
    , e AS (SELECT n.*, md5(n.id || ':event')::uuid::text AS event_id FROM n)
    INSERT INTO outbox (event_id, request_id, event_type, routing_key, body, created_at,
                        sent_at, publish_attempts)
    SELECT e.event_id, e.id, o.event_type, o.routing_key,
           replace(replace(replace(o.body, t.request_id, e.id), o.event_id, e.event_id),
                   t.account, e.account),
           e.at + (o.created_at - t.received_at), e.at + (o.sent_at - t.received_at),
           o.publish_attempts
    FROM e, debit_requests t JOIN outbox o ON o.request_id = t.request_id
    WHERE t.request_id = %(template)s AND o.sent_at IS NOT NULL
    ORDER BY e.i, o.id
"""  # noqa: S608 - constants


def libpq_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def template_request(database_url: str) -> str:
    """A request the worker finished with success, with its audit entries and a sent event."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT t.request_id FROM debit_requests t WHERE t.status = 'succeeded' AND "
            "EXISTS (SELECT 1 FROM outbox o WHERE o.request_id = t.request_id AND o.sent_at "
            "IS NOT NULL) ORDER BY t.finished_at DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise RuntimeError("no succeeded request with a sent event to clone: run a load first")
    return str(row[0])


def seed(
    database_url: str,
    template: str,
    count: int,
    until: datetime,
    say: Callable[[str], None] = print,
) -> float:
    """Write `count` clones of request `template` received before `until`; seconds taken.
    Each table is written by a connection of its own (PostgreSQL runs one INSERT on one
    core; the machine has two), chunk by chunk, then vacuumed and analysed."""
    began = time.monotonic()
    base = {"count": count, "until": until, "rate": SEED_RATE, "template": template}

    def fill(table: str, statement: str) -> None:
        with psycopg.connect(libpq_url(database_url)) as conn:
            # Fewer bytes of WAL for the pages checkpoints make it log whole (on a server
            # of the default max_wal_size, a checkpoint every GB).
            conn.execute("SET wal_compression = lz4")
            for first in range(1, count + 1, CHUNK):
                last = min(count, first + CHUNK - 1)
                conn.execute(statement, {**base, "first": first, "last": last})
                conn.commit()
                if table == "debit_requests":
                    say(f"  {last:,} of {count:,} requests ({time.monotonic() - began:.0f} s)")
            conn.autocommit = True
            conn.execute(f"VACUUM (ANALYZE) {table}")

    work = {
        "debit_requests": _request_insert(),
        "audit_log": _AUDIT_INSERT,
        "outbox": _OUTBOX_INSERT,
    }
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        for done in [pool.submit(fill, table, statement) for table, statement in work.items()]:
            done.result()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        # The seeding's dirty pages written now, not by a checkpoint during the load after it.
        conn.execute("CHECKPOINT")
    return time.monotonic() - began
