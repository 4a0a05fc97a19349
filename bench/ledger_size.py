"""`ledger-size`: a ledger that does not slow down. The load of "ours" on the ledger as it is
(the run's first "ours", on an empty ledger; with `--only ledger-size`, a run of its own
first), then `--ledger-rows` finished requests seeded (bench/ledger_seed.py) and the same
load again; then the operators' lookups at that size, timed as the CLI makes them, and the
bytes each debit takes in the ledger."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import psycopg

from bench import phases
from bench.ledger_seed import PREFIX, SEED_ACCOUNTS, libpq_url, seed, template_request
from bench.phases import Measured, Setup
from bench.services import VENV_BIN
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.request_list import RequestQuery, list_requests

LOOKUPS: Final = 200  # of each kind, on random seeded requests and accounts
SECONDS_PER_YEAR: Final = 365 * 86_400
RETAINED_TABLE: Final = "outbox"  # its sent rows are kept `RETENTION_DAYS`, not for good
RETENTION_DAYS: Final = 7


@dataclass(frozen=True)
class LedgerSize:
    seeded: int  # finished requests written in bulk
    seed_seconds: float
    empty: Measured  # "ours" on the ledger before the seeding
    full: Measured  # "ours" on the seeded ledger
    status_ms: list[float]  # each `status ID` lookup: the three reads it makes
    list_ms: list[float]  # each `requests list --account A` lookup
    status_cli_ms: float  # one `debit-worker status ID` process, start to exit
    list_cli_ms: float  # one `debit-worker requests list --account A` process
    table_bytes: dict[str, int]  # what the seeding added to each table (heap, indexes, TOAST)

    @property
    def drop(self) -> float:
        """The share of throughput lost on the seeded ledger (negative: it rose)."""
        if not self.empty.throughput:
            return float("nan")
        return 1 - self.full.throughput / self.empty.throughput

    @property
    def p99_rise(self) -> float:
        """How much higher the p99 publish → event is on the seeded ledger (negative: lower)."""
        before = self.empty.latency(0.99)
        return self.full.latency(0.99) / before - 1 if before else float("nan")

    def bytes_per_debit(self) -> dict[str, float]:
        """What one seeded request added to each table it wrote to."""
        seeded = self.seeded or 1
        return {table: size / seeded for table, size in self.table_bytes.items() if size > 0}

    def growth_per_year(self, rate: float, *, retention: bool) -> float:
        """Bytes a year adds at `rate` debits/s; with `retention`, the outbox holds only its
        last RETENTION_DAYS of sent events (a constant size, so it adds nothing)."""
        per_debit = self.bytes_per_debit()
        kept = sum(v for table, v in per_debit.items() if not retention or table != RETAINED_TABLE)
        return kept * rate * SECONDS_PER_YEAR

    def outbox_at_retention(self, rate: float) -> float:
        """The outbox's size with RETENTION_DAYS of sent events at `rate` debits/s."""
        return self.bytes_per_debit().get(RETAINED_TABLE, 0.0) * rate * RETENTION_DAYS * 86_400


def ledger_size(
    setup: Setup,
    rate: float,
    duration: float,
    rows: int,
    empty: Measured | None = None,
    say: Callable[[str], None] = print,
) -> LedgerSize:
    url = setup.services.database_url
    if empty is None:
        empty = phases.ours_at_stripe_rate(
            setup, rate, duration, name="ours, empty ledger", prefix="size-empty"
        )
        say(f"empty ledger: {empty.throughput:.1f}/s, p99 {empty.latency(0.99) * 1000:.0f} ms")
    say(f"seeding {rows:,} finished requests")
    before = table_sizes(url)
    seconds = seed(url, template_request(url), rows, datetime.now(UTC), say)
    after = table_sizes(url)
    added = {table: size - before.get(table, 0) for table, size in after.items()}
    full = phases.ours_at_stripe_rate(
        setup, rate, duration, name=f"ours, {rows:,} requests in the ledger", prefix="size-full"
    )
    status_ms, list_ms = lookups(url, rows)
    env = phases.product_env(setup, rate=100, redis=False)
    status_cli = cli_ms(env, "status", f"{PREFIX}{random.randint(1, rows):010d}")  # noqa: S311
    list_cli = cli_ms(env, "requests", "list", "--account", seeded_account(0))
    return LedgerSize(rows, seconds, empty, full, status_ms, list_ms, status_cli, list_cli, added)


def seeded_account(number: int) -> str:
    return f"acct_1LedgerSeed{number % SEED_ACCOUNTS:08d}"


def lookups(database_url: str, rows: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each lookup, in this process, on the CLI's engine (a pool of two): the
    reads `status ID` makes (the request, its events, its history) and `requests list
    --account A`'s, each of a random seeded request or account; one untimed of each first
    (the connection's start)."""
    pick = random.Random(19)  # noqa: S311 - a sample, not a secret
    ids = [f"{PREFIX}{pick.randint(1, rows):010d}" for _ in range(LOOKUPS + 1)]
    accounts = [seeded_account(pick.randrange(min(rows, SEED_ACCOUNTS))) for _ in ids]
    engine = make_engine(database_url, pool_size=2)
    ledger = Ledger.on(engine)

    def status(request_id: str) -> None:
        ledger.requests.get(request_id)
        ledger.outbox.for_request(request_id)
        ledger.history("request", request_id)

    def listing(account: str) -> None:
        list_requests(engine, RequestQuery(account=account))

    try:
        return _timed(status, ids), _timed(listing, accounts)
    finally:
        engine.dispose()


def _timed(call: Callable[[str], None], arguments: list[str]) -> list[float]:
    call(arguments[0])
    spent = []
    for argument in arguments[1:]:
        began = time.perf_counter()
        call(argument)
        spent.append((time.perf_counter() - began) * 1000)
    return spent


def cli_ms(env: dict[str, str], *command: str) -> float:
    """Milliseconds of one `debit-worker COMMAND…` process, start to exit."""
    began = time.perf_counter()
    subprocess.run(
        [str(VENV_BIN / "debit-worker"), *command],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return (time.perf_counter() - began) * 1000


def table_sizes(database_url: str) -> dict[str, int]:
    """pg_total_relation_size (heap, indexes, TOAST) of every table but Alembic's."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        sizes = conn.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relkind = 'r' "
            "AND relnamespace = 'public'::regnamespace AND relname <> 'alembic_version'"
        ).fetchall()
    return {str(name): int(size) for name, size in sizes}
