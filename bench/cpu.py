"""`python -m bench.cpu`: the worker's own CPU per debit, one debit at a time.

Throughput on a small machine is bounded by CPU, and contention hides where it goes. This
runs the real handler (signature check, ledger on PostgreSQL, the Stripe SDK against a
zero-latency sandbox process, confirmed event publish to RabbitMQ) sequentially in one
thread, and reports CPU milliseconds per debit, SQL statements per debit, and where the CPU
went (by package, from cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import re
import sys
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
from pydantic import AnyUrl, SecretStr
from sqlalchemy import event

from bench.load import BENCH_SIGNER, command
from bench.services import cpu_seconds, own_services, sandbox_process
from worker.adapters.rate_budget import ENDPOINT_CLASSES
from worker.app import build_worker, declare_topology
from worker.handlers import Result, handle_debit_requested
from worker.settings import Settings

PACKAGES = (
    "sqlalchemy",
    "psycopg",
    "stripe",
    "requests",
    "urllib3",
    "http",
    "kombu",
    "amqp",
    "celery",
    "pydantic",
    "json",
    "logging",
    "worker",
    "schemas",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("--debits", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="break the CPU down by package")
    parser.add_argument("--dump", help="with --profile: write the cProfile stats here")
    args = parser.parse_args(argv)
    api_key = f"sk_test_bench{uuid.uuid4().hex}"
    with own_services() as services, sandbox_process(api_key) as admin:
        settings = Settings(
            broker_url=services.broker_url,
            database_url=services.database_url,
            stripe_api_key=SecretStr(api_key),
            stripe_api_base=AnyUrl(admin.url),
            stripe_rate_limit=1_000_000,
            stripe_endpoint_limits=dict.fromkeys(ENDPOINT_CLASSES, 1_000_000),
            producer_keys={
                BENCH_SIGNER.producer: {BENCH_SIGNER.key_id: SecretStr(BENCH_SIGNER.secret)}
            },
            sentry_dsn=None,
        )
        app, runtime = build_worker(settings, relay=False)
        declare_topology(app)
        svc = runtime.services()
        statements = Counter[str]()

        class CountingCursor(psycopg.Cursor[Any]):
            # Counted where psycopg sends them: the hot path's statements bypass SQLAlchemy
            # (worker/adapters/ledger/pg_direct.py), so SQLAlchemy's events would miss them.
            def execute(self, *args: Any, **kwargs: Any) -> Any:
                statements["all"] += 1
                return super().execute(*args, **kwargs)

        @event.listens_for(svc.ledger.engine, "connect")
        def _count(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.cursor_factory = CountingCursor

        def one(index: int) -> None:
            body = command(f"cpu-{index:07d}", index)
            result = handle_debit_requested(
                body, svc, owner="bench", headers=BENCH_SIGNER.headers_for(body)
            )
            if result is not Result.SUCCEEDED:
                raise RuntimeError(f"debit {index} was not a success: {result}")

        for index in range(20):  # warm-up: caches, pools, compiled statements
            one(-1 - index)
        statements.clear()
        # CPU time, not wall time: waiting for PostgreSQL or the broker is not the worker's cost
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        others = cpu_seconds()
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for index in range(args.debits):
            one(index)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        spent = cpu_seconds().spent_since(others)
        by_service = {kind: spent[kind] for kind in ("postgresql", "rabbitmq", "sandbox")}
        result = {
            "debits": args.debits,
            "cpu_ms_per_debit": round(cpu / args.debits * 1000, 3),
            "wall_ms_per_debit": round(wall / args.debits * 1000, 3),
            "sql_statements_per_debit": round(statements["all"] / args.debits, 2),
            **{
                f"{name}_cpu_ms_per_debit": round(seconds / args.debits * 1000, 3)
                for name, seconds in by_service.items()
            },
        }
        print(json.dumps(result))
        if profiler:
            _by_package(profiler, args.debits)
            if args.dump:
                profiler.dump_stats(args.dump)
    return 0


def _by_package(profiler: cProfile.Profile, debits: int) -> None:
    stats = pstats.Stats(profiler)
    own: Counter[str] = Counter()
    for (path, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        own[_package(path)] += tottime
    total = sum(own.values())
    for package, seconds in own.most_common(16):
        print(f"{seconds / debits * 1000:7.3f} ms/debit {seconds / total * 100:5.1f}%  {package}")


def _package(path: str) -> str:
    for package in PACKAGES:
        if re.search(rf"[/\\]{package}[/\\]|[/\\]{package}\.py$", path):
            return package
    return "other" if path != "~" else "builtins (C)"


if __name__ == "__main__":
    sys.exit(main())
