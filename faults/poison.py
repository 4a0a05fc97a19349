"""Poison and fuzz: malformed and adversarial messages through the real broker to real worker
processes. Each must end as a DebitFailed (its request_id was readable) or as a dead letter (in
the dead-letter queue, from which the workers' keepers move it into the ledger); no worker may
crash; Stripe must not be called at all.

    python -m faults.poison --messages 10000      (make poison M=10000)
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from kombu import Connection

from faults.broker import Broker
from faults.services import (
    RABBIT_HOST,
    WorkerPool,
    own_database,
    own_vhost,
    sandbox_process,
    worker_env,
)
from worker.adapters.ledger import utc_now
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.dead_letters import DeadLetterStore
from worker.sandbox import SandboxAdmin
from worker.transport.parsing import InvalidCommand, Undeliverable, parse_command
from worker.transport.plain_consumer import COMPRESSION_HEADER
from worker.transport.topology import declare_all

COLLECTOR = "poison.events"
FAILED = "io.debit-worker.debit.failed.v1"
PLATFORM_READ = "GET /v1/account"  # the sandbox's name for the request
Body = bytes
Gen = Callable[[random.Random, str], Body]


def _valid(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "account": "acct_1ExpressUS00000001",
        "amount": 100,
        "currency": "usd",
        "reason": "platform_charge",
    }


# Values that break the contract for each field (never a valid command, whatever the rest).
BAD_VALUES: dict[str, list[Any]] = {
    "amount": ["12", 12.5, -1, 0, True, None, 10**30, [], {}, "1e3", float("1e300")],
    "currency": [5, "", "US D", None, "USD", "usdollars", ["usd"], "\u00fcsd"],
    "account": ["acct_", 123, "", "bob", None, "acct_" + "a" * 200, "acct_\u0000x"],
    "reason": ["nope", 7, None, "", "PLATFORM_CHARGE"],
    "description": ["", 5, "x" * 5000],
    "metadata": ["x", [1], {"": "v"}, {"k": 5}, {"k" * 100: "v"}],
    # (an integer requested_at is read as a Unix time, so it is not here)
    "requested_at": ["yesterday", "2026-01-01T00:00:00", [2026]],
    "unexpected_field": ["customer", 1, None],
}


def json_bad_values(rng: random.Random, request_id: str) -> Body:
    body = _valid(request_id)
    for field in rng.sample(sorted(BAD_VALUES), rng.randint(1, 3)):
        body[field] = rng.choice(BAD_VALUES[field])
    if rng.random() < 0.2:
        del body[rng.choice(["account", "amount", "currency", "reason"])]
    return json.dumps(body).encode()


def missing_fields(rng: random.Random, request_id: str) -> Body:
    body = _valid(request_id)
    for field in rng.sample(["account", "amount", "currency", "reason"], rng.randint(1, 4)):
        del body[field]
    return json.dumps(body).encode()


def lone_surrogates(rng: random.Random, request_id: str) -> Body:
    field = rng.choice(["account", "currency", "description", "reason"])
    text = json.dumps(_valid(request_id))
    return text.replace("}", f', "{field}x": "\\ud800{rng.randint(0, 9)}"}}').encode()


def bad_request_id(rng: random.Random, request_id: str) -> Body:
    body = _valid(request_id)
    body["request_id"] = rng.choice(
        [None, 5, "", "has spaces", "x" * 200, ["id"], {"id": 1}, "\u00e9t\u00e9", "-lead"]
    )
    if rng.random() < 0.3:
        del body["request_id"]
    return json.dumps(body).encode()


def not_utf8(rng: random.Random, request_id: str) -> Body:
    prefix = json.dumps(_valid(request_id)).encode()[: rng.randint(0, 40)]
    return prefix + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE, 0xED])]) + rng.randbytes(8)


def not_json(rng: random.Random, request_id: str) -> Body:
    return rng.choice(
        [
            b"",
            b"not json",
            f"<debit id='{request_id}'/>".encode(),
            b"{'request_id': 'single-quotes'}",
            json.dumps(_valid(request_id)).encode()[:-1],
            b"NaN",
            b"\x00\x00\x00",
            ("{" * 50).encode(),
            b"{" + rng.randbytes(32).hex().encode(),
        ]
    )


def not_an_object(rng: random.Random, request_id: str) -> Body:
    return json.dumps(rng.choice([[_valid(request_id)], 5, "s", None, True, [], 1.5e300])).encode()


def huge(rng: random.Random, request_id: str) -> Body:
    body = _valid(request_id)
    body["description"] = "x" * rng.randint(70_000, 300_000)
    return json.dumps(body).encode()


def deeply_nested(rng: random.Random, request_id: str) -> Body:
    depth = rng.choice([1_000, 20_000])
    inner = "[" * depth + "]" * depth
    return f'{{"request_id": "{request_id}", "metadata": {inner}}}'.encode()


def huge_numbers(rng: random.Random, request_id: str) -> Body:
    digits = rng.choice([30, 5_000, 40_000])
    return f'{{"request_id": "{request_id}", "amount": {"9" * digits}}}'.encode()


def duplicate_keys(rng: random.Random, request_id: str) -> Body:
    # The last value wins in most parsers; here it is invalid either way.
    return f'{{"request_id": "{request_id}", "amount": 5, "amount": "{rng.random()}"}}'.encode()


@cache
def _zeros_bomb() -> Body:
    """20 MiB of zeros in about 20 KB."""
    return zlib.compress(bytes(20 << 20), 9)


def compressed(rng: random.Random, request_id: str) -> Body:
    """Published with kombu's `compression` header (see generate): a command that a worker
    inflating it would read and answer, or a small bomb. Each must be dead-lettered."""
    if rng.random() < 0.2:
        return _zeros_bomb()
    return zlib.compress(json.dumps(_valid(request_id)).encode())


# kombu's names for zlib, and one it does not know.
COMPRESSIONS = ["application/x-gzip", "gzip", "zlib", "application/x-snappy"]
REFUSED_COMPRESSED = "compressed commands are refused"

GENERATORS: dict[str, Gen] = {
    "json_bad_values": json_bad_values,
    "missing_fields": missing_fields,
    "lone_surrogates": lone_surrogates,
    "bad_request_id": bad_request_id,
    "not_utf8": not_utf8,
    "not_json": not_json,
    "not_an_object": not_an_object,
    "huge": huge,
    "deeply_nested": deeply_nested,
    "huge_numbers": huge_numbers,
    "duplicate_keys": duplicate_keys,
    "compressed": compressed,
}
WEIGHTS = {"huge": 0.3, "deeply_nested": 0.3, "huge_numbers": 0.5, "compressed": 0.3}

CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/xml",
    "application/x-python-serialize",
    "application/octet-stream",
    None,
]


def properties(rng: random.Random) -> dict[str, Any]:
    props: dict[str, Any] = {}
    content_type = rng.choice(CONTENT_TYPES)
    if content_type:
        props["content_type"] = content_type
    if rng.random() < 0.3:
        props["content_encoding"] = rng.choice(["utf-8", "gzip", "binary", "latin-1", "zz"])
    if rng.random() < 0.5:
        props["application_headers"] = rng.choice(
            [
                {},
                {"x-producer": "fuzz", "n": rng.randint(-(2**31), 2**31)},
                {"nested": {"a": [1, "b", {"c": None}]}, "flag": True},
                {"when": datetime.now(UTC).replace(microsecond=0), "price": Decimal("1.50")},
                {"long": "h" * 10_000},
                {"x-death": "not a list"},
                {"x-debit-worker-stage": 5, "x-debit-worker-reason": ["forged"]},
                {"task": "debit_worker.process_debit", "id": "forged", "argsrepr": "()"},
            ]
        )
    if rng.random() < 0.3:
        props["message_id"] = rng.choice(["", "m" * 200, "id-1"])
    return props


def generate(count: int, rng: random.Random) -> list[tuple[str, Body, dict[str, Any]]]:
    names = sorted(GENERATORS)
    weights = [WEIGHTS.get(name, 1.0) for name in names]
    made = []
    for number in range(count):
        while True:
            kind = rng.choices(names, weights)[0]
            body = GENERATORS[kind](rng, f"psn-{number:06d}")
            if not _is_a_command(body):
                break
        props = properties(rng)
        if kind == "compressed":
            headers = props.get("application_headers") or {}
            props["application_headers"] = {
                **headers,
                COMPRESSION_HEADER: rng.choice(COMPRESSIONS),
            }
        made.append((kind, body, props))
    return made


def _is_a_command(body: Body) -> bool:
    """Guard on the generator itself: a valid command would rightly call Stripe."""
    try:
        parse_command(body)
    except (InvalidCommand, Undeliverable):
        return False
    return True


def total(requests: dict[str, int]) -> int:
    return sum(requests.values())


def _wait_for_platform_reads(admin: SandboxAdmin, workers: int, deadline: float) -> None:
    while admin.state().requests.get(PLATFORM_READ, 0) < workers:
        if time.monotonic() > deadline:
            return  # a read that comes later shows up below as a Stripe call: a violation
        time.sleep(0.2)


def run(count: int, workers: int, seed: int, timeout: float) -> int:
    rng = random.Random(seed)
    messages = generate(count, rng)
    log_dir = Path(tempfile.mkdtemp(prefix="debit-poison-"))
    started = time.monotonic()
    with (
        own_vhost("debit-poison") as vhost,
        own_database("debit_poison") as database_url,
        sandbox_process(log_dir) as admin,
    ):
        with Connection(f"amqp://guest:guest@{RABBIT_HOST}/{vhost}") as conn:
            declare_all(conn.default_channel)
        broker = Broker(vhost)
        broker.bind_collector(COLLECTOR)
        env = worker_env(vhost, database_url, admin.url, log_level="ERROR")
        pool = WorkerPool(env, log_dir, workers, 16)
        pool.start_all()
        # Each worker process reads the platform's account as it starts (worker/ops/warm_up.py):
        # those reads come before any message, and are not counted against them.
        _wait_for_platform_reads(admin, workers, deadline=time.monotonic() + 60)
        stripe_before = admin.state().requests
        for _, body, props in messages:
            broker.publish(body, **props)
        ledger = make_engine(database_url, pool_size=1)
        failed, dead, other = _collect(broker, DeadLetterStore(ledger, utc_now), count, timeout)
        ledger.dispose()
        stripe_after = admin.state().requests
        pool.reap()
        alive = all(proc.poll() is None for proc in pool.procs.values())
        pool.stop_all()
        broker.close()
    violations = []
    if len(failed) + len(dead) != count:
        violations.append(f"{len(failed)} DebitFailed + {len(dead)} dead letters != {count}")
    if other:
        violations.append(f"{other} events other than DebitFailed")
    sent_compressed = sum(kind == "compressed" for kind, _, _ in messages)
    refused = [m for m in dead if _reason(m).startswith(REFUSED_COMPRESSED)]
    if len(refused) != sent_compressed:
        violations.append(f"{len(refused)} of {sent_compressed} compressed messages refused")
    if any(COMPRESSION_HEADER in (m.headers or {}) for m in refused):
        violations.append("a refused compressed message kept its compression header")
    calls = total(stripe_after) - total(stripe_before)
    if calls:
        violations.append(f"{calls} Stripe calls: {stripe_before} -> {stripe_after}")
    if not alive or pool.exits or pool.starts != workers:
        violations.append(f"worker crashed: exits {dict(pool.exits)}, starts {pool.starts}")
    report = {
        "command": " ".join(sys.argv),
        "messages": count,
        "by_kind": dict(sorted(Counter(kind for kind, _, _ in messages).items())),
        "debit_failed": len(failed),
        "failure_codes": dict(Counter(failed.values())),
        "dead_letters": len(dead),
        "compressed_refused": len(refused),
        "stripe_calls": calls,
        "seconds": round(time.monotonic() - started, 1),
        "violations": violations,
        "logs": str(log_dir),
    }
    print(json.dumps(report, indent=2))
    return 1 if violations else 0


def _reason(message: Any) -> str:
    return str((message.headers or {}).get("x-debit-worker-reason", ""))


def _collect(
    broker: Broker, store: DeadLetterStore, count: int, timeout: float
) -> tuple[dict[str, str], list[Any], int]:
    """DebitFailed events by event id (deduplicated) and dead letters (as the workers' keepers
    moved them into the ledger, each once), until all are in."""
    failed: dict[str, str] = {}
    dead: list[Any] = []
    other = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(failed) + len(dead) < count:
        for message in broker.drain(COLLECTOR, idle_seconds=0.5):
            event = json.loads(message.body)
            if event["type"] == FAILED:
                failed[event["id"]] = event["data"]["code"]
            else:
                other += 1
        dead = store.listed(state=None, limit=count + 1)
    time.sleep(2)  # anything late or duplicated would show up now
    for message in broker.drain(COLLECTOR, idle_seconds=1):
        event = json.loads(message.body)
        if event["type"] == FAILED:
            failed[event["id"]] = event["data"]["code"]
    dead = store.listed(state=None, limit=count + 1)
    return failed, dead, other


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-m", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like an exception, so the workers, vhost and database are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(args.messages, args.workers, args.seed, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
