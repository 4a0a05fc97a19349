"""Run N debits through real worker processes while breaking everything, then check that
every request got exactly one outcome and every cent adds up.

    python -m faults.harness --requests 5000      (make faults N=5000)

Faults, at random moments: SIGKILL and SIGTERM of worker processes; crash points inside the
worker (after Stripe answered, after the outcome was recorded, after it was published);
RabbitMQ `stop_app`/`start_app`; a PostgreSQL restart; sandbox 429s, 500s, lost responses
(the money moved), debits carried out although answered 500 (at once, or seconds later) and
latency spikes longer than the worker's Stripe timeout.

After each SIGKILL it notes the debits the dead process held and, at the end, how soon
another process resumed each one (faults/recovery.py): the report's `recovery` part; a
resume later than 15 s is a violation.

The workers settle requests in needs_reconciliation every 20 s (a 10 s grace for late
execution), and once the run has drained the books are closed as an operator would
(faults/reconcile.py): `debit-worker reconcile` in rounds until no request awaits
reconciliation, then the daily proof of each day the run touched. Exits 1 if any invariant
is violated (see faults/invariants.py).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from kombu import Connection

from faults.broker import Broker, events_of
from faults.invariants import Plan, PlannedRequest, check
from faults.reconcile import (
    Closing,
    DayProof,
    escalation_counts,
    escalations,
    operator_env,
    prove_days,
    reconcile_rounds,
)
from faults.recovery import RecoveryWatch, recovery_report
from faults.services import (
    HARNESS_SIGNER,
    RABBIT_HOST,
    WorkerPool,
    grant_consents,
    own_database,
    own_vhost,
    rabbitmqctl,
    sandbox_process,
    worker_env,
)
from worker.adapters.ledger import Ledger, utc_now
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.dead_letters import DeadLetterStore
from worker.sandbox import Faults, SandboxAdmin
from worker.transport.topology import declare_all

US = "acct_1ExpressUS00000001"
LOW = "acct_1LowBalanceUS00001"
NO_CONSENT = "acct_1CustomLegacy000001"
COLLECTOR = "faults.events"


@dataclass
class Options:
    requests: int
    workers: int
    concurrency: int
    publish_seconds: float
    broker_restarts: int
    postgres_restarts: int
    crash_share: float
    drain_timeout: float
    reconcile_timeout: float
    seed: int
    report: Path | None


@dataclass
class Chaos:
    injected: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    # (down, up) of each broker or PostgreSQL restart: recoveries overlapping them are apart
    outages: list[tuple[datetime, datetime]] = field(default_factory=list)


def baseline_faults(seed: int) -> Faults:
    return Faults(
        latency_p50_ms=15,
        latency_p99_ms=400,
        rate_limit_share=0.10,
        server_error_share=0.10,
        drop_after_share=0.05,
        drop_before_share=0.02,
        executed_server_error_share=0.015,
        executed_late_share=0.015,
        executed_late_seconds=3,
        random_seed=seed,
    )


def make_plan(count: int, rng: random.Random) -> Plan:
    planned = []
    for number in range(count):
        draw = rng.random()
        request_id = f"flt-{number:06d}-{rng.getrandbits(32):08x}"
        if draw < 0.88:
            kind, body = "valid", _command(request_id, US, rng.randint(1, 150))
        elif draw < 0.93:
            kind, body = "low_balance", _command(request_id, LOW, rng.randint(50, 200))
        elif draw < 0.97:
            kind, body = "no_consent", _command(request_id, NO_CONSENT, 100)
        else:
            kind, body = "invalid", _command(request_id, US, "ten")
        planned.append(PlannedRequest(request_id, kind, body, duplicate=rng.random() < 0.03))
    return Plan(planned)


def _command(request_id: str, account: str, amount: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "account": account,
        "amount": amount,
        "currency": "usd",
        "reason": "platform_charge",
        "description": "fault harness",
    }


def publish_all(broker: Broker, plan: Plan, seconds: float, rng: random.Random) -> None:
    order = list(plan.requests) + [p for p in plan.requests if p.duplicate]
    rng.shuffle(order)
    pause = seconds / max(1, len(order))
    for item in order:
        body = json.dumps(item.body).encode()
        broker.publish(
            body,
            content_type="application/json",
            application_headers=HARNESS_SIGNER.headers_for(body),
        )
        time.sleep(pause)


def restart_broker(chaos: Chaos) -> None:
    down = datetime.now(UTC)
    try:
        rabbitmqctl("stop_app", timeout=120)
        time.sleep(2)
        rabbitmqctl("start_app", timeout=120)
    finally:
        chaos.outages.append((down, datetime.now(UTC)))
    chaos.injected["broker_restart"] += 1


def restart_postgres(chaos: Chaos) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    down = datetime.now(UTC)
    try:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        chaos.outages.append((down, datetime.now(UTC)))
    chaos.injected["postgres_restart"] += 1


def sigkill(pool: WorkerPool, slot: int, watch: RecoveryWatch) -> bool:
    """SIGKILL one worker process and note what it held (once it is gone) for the recovery
    figures. False when the slot's process had already ended."""
    others = pool.alive_except(slot)
    at = datetime.now(UTC)
    pid = pool.kill(slot, signal.SIGKILL)
    if pid is None:
        return False
    pool.wait_ended(slot)
    time.sleep(0.2)  # a commit the process had sent lands before the ledger is read
    watch.killed(pid, at, others_alive=others > 0)
    return True


def latency_spike(admin: SandboxAdmin, chaos: Chaos, seed: int, rng: random.Random) -> None:
    # Longer than the worker's Stripe timeout: calls hang, time out, and are repeated.
    spike = baseline_faults(seed).model_copy(update={"latency_ms": rng.uniform(2500, 4000)})
    admin.set_faults(spike)
    chaos.injected["latency_spike"] += 1
    time.sleep(rng.uniform(3, 6))
    admin.set_faults(baseline_faults(seed + chaos.injected["latency_spike"]))


def chaos_loop(  # noqa: PLR0917 - each is one part of the run
    pool: WorkerPool,
    admin: SandboxAdmin,
    chaos: Chaos,
    opts: Options,
    rng: random.Random,
    watch: RecoveryWatch,
) -> None:
    broker_left, postgres_left = opts.broker_restarts, opts.postgres_restarts
    window = opts.publish_seconds
    # Spread the infrastructure restarts over the publishing window.
    infra = sorted(
        [(rng.uniform(0.15, 0.85) * window, "broker") for _ in range(broker_left)]
        + [(rng.uniform(0.15, 0.85) * window, "postgres") for _ in range(postgres_left)]
    )
    started = time.monotonic()
    while not chaos.stop.wait(rng.uniform(1.0, 4.0)):
        elapsed = time.monotonic() - started
        try:
            if infra and elapsed >= infra[0][0]:
                _, what = infra.pop(0)
                (restart_broker if what == "broker" else restart_postgres)(chaos)
                continue
            action = rng.choice(["sigkill", "sigkill", "sigterm", "latency"])
            if action == "latency":
                latency_spike(admin, chaos, opts.seed, rng)
                continue
            slot = rng.randrange(pool.size)
            if action == "sigkill":
                sigkill(pool, slot, watch)
            else:
                pool.kill(slot, signal.SIGTERM)
            chaos.injected[f"worker_{action}"] += 1
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"chaos step failed: {exc!r}", file=sys.stderr)


def supervise(pool: WorkerPool, done: threading.Event) -> None:
    """Restart any worker that ended (killed by us, a crash point, or a failed start)."""
    while not done.wait(0.5):
        for slot in pool.reap():
            time.sleep(random.uniform(0.2, 1.5))
            pool.start(slot)


def wait_until_settled(
    ledger: Ledger, broker: Broker, plan: Plan, timeout: float
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    remaining: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            remaining = plan.unsettled(ledger)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL may be restarting
            print(f"ledger not readable yet: {exc!r}", file=sys.stderr)
            time.sleep(2)
            continue
        queues = sum(max(0, broker.depth(q)) for q in ("debits.commands.worker", "debits.tasks"))
        if not remaining and queues == 0:
            return {}
        print(f"waiting: {remaining} open, {queues} queued", file=sys.stderr)
        time.sleep(3)
    return remaining


def close_books(
    env: dict[str, str], ledger: Ledger, opts: Options, first_day: date
) -> tuple[Closing, list[DayProof]]:
    """The operator's reconciliation rounds, then the proof of each UTC day the run touched
    (its first, and today if the run crossed midnight)."""
    operator = operator_env(env)
    closing = reconcile_rounds(operator, ledger, timeout=opts.reconcile_timeout, pause=3)
    days = sorted({first_day, datetime.now(UTC).date()})
    return closing, prove_days(operator, days)


def dead_letters(ledger: Ledger, broker: Broker) -> int:
    """Kept in the ledger by the workers' keepers, and any not moved there yet."""
    kept = DeadLetterStore(ledger.engine, utc_now).listed(state=None, limit=10**7)
    return len(kept) + len(broker.drain("debits.dead-letter", idle_seconds=1))


def run(opts: Options) -> int:
    rng = random.Random(opts.seed)
    plan = make_plan(opts.requests, rng)
    log_dir = Path(tempfile.mkdtemp(prefix="debit-faults-"))
    started = time.monotonic()
    first_day = datetime.now(UTC).date()
    with (
        own_vhost("debit-faults") as vhost,
        own_database("debit_faults") as database_url,
        sandbox_process(log_dir) as admin,
    ):
        grant_consents(database_url, (US, LOW))
        with Connection(f"amqp://guest:guest@{RABBIT_HOST}/{vhost}") as conn:
            declare_all(conn.default_channel)
        broker = Broker(vhost)
        broker.bind_collector(COLLECTOR)
        admin.set_faults(baseline_faults(opts.seed))
        env = run_env(vhost, database_url, admin.url, opts.crash_share)
        pool = WorkerPool(env, log_dir, opts.workers, opts.concurrency)
        pool.start_all()
        chaos, done = Chaos(), threading.Event()
        watch = RecoveryWatch(make_engine(database_url, pool_size=1))
        watch.host = env.get("DEBIT_WORKER_HOST_NAME") or watch.host
        supervisor = threading.Thread(target=supervise, args=(pool, done), daemon=True)
        supervisor.start()
        chaos_thread = threading.Thread(
            target=chaos_loop, args=(pool, admin, chaos, opts, rng, watch), daemon=True
        )
        chaos_thread.start()
        try:
            publish_all(broker, plan, opts.publish_seconds, rng)
            chaos.stop.set()
            chaos_thread.join()
            ledger = Ledger.on(make_engine(database_url, pool_size=2))
            unsettled = wait_until_settled(ledger, broker, plan, opts.drain_timeout)
            closing, proofs = close_books(env, ledger, opts, first_day)
            # the events of the last settlements, published inline or by the relay
            unsettled = unsettled or wait_until_settled(ledger, broker, plan, 120)
            time.sleep(3)  # let the last inline publishes and relay rounds land
            events = events_of(broker.drain(COLLECTOR))
            dead = dead_letters(ledger, broker)
            state = admin.state()
            problems = admin.problems()
            ended = escalations(ledger)
            result = check(plan, events, ledger, state, problems, closing.left, proofs)
            recovery, late = recovery_report(watch, pool.started_at, chaos.outages)
            result.violations.extend(late)
        finally:
            done.set()
            pool.stop_all()
            pool.reap()
            broker.close()
    faults = Counter(chaos.injected)
    faults.update({f"sandbox_{k}": v for k, v in state.faults_injected.items()})
    faults.update(pool.exits)
    report = {
        "command": " ".join(sys.argv),
        "requests": opts.requests,
        "duplicates_published": sum(1 for p in plan.requests if p.duplicate),
        "seconds": round(time.monotonic() - started, 1),
        "worker_starts": pool.starts,
        "faults_injected": dict(sorted(faults.items())),
        "outcomes": result.outcomes,
        "events_received": len(events),
        "dead_letters": dead,
        "stripe_requests": state.requests,
        "unsettled": unsettled,
        "reconciliation": {
            "escalated_during_run": len(ended),
            "escalations_ended_by": escalation_counts(ended),
            **closing.summary(),
        },
        "daily_proof": [proof.summary() for proof in proofs],
        "recovery": recovery,
        "violations": result.violations,
        "logs": str(log_dir),
    }
    write_report(report, opts.report)
    return 1 if result.violations or unsettled else 0


def run_env(vhost: str, database_url: str, sandbox_url: str, crash: float) -> dict[str, str]:
    """The workers' settings: quick retries and rounds, a 2 s Stripe timeout (the latency
    spikes outlast it), crash points; the claim lease and the janitor interval are the
    defaults, so that the recovery figures are the shipped ones."""
    return worker_env(
        vhost,
        database_url,
        sandbox_url,
        stripe_timeout_seconds=2,
        stripe_rate_limit=500,
        retry_base_seconds=0.5,
        retry_max_seconds=4,
        relay_interval_seconds=1,
        janitor_stale_after_seconds=30,
        reconcile_interval_seconds=20,
        reconcile_grace_seconds=10,
        log_level="WARNING",
        crash_points=f"after_stripe:{crash},after_record:{crash},after_publish:{crash}",
    )


def write_report(report: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", "-n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--publish-seconds", type=float, help="default: N/60, at least 20")
    parser.add_argument("--broker-restarts", type=int, default=1)
    parser.add_argument("--postgres-restarts", type=int, default=1)
    parser.add_argument("--crash-share", type=float, default=0.002)
    parser.add_argument("--drain-timeout", type=float, default=900)
    parser.add_argument(
        "--reconcile-timeout",
        type=float,
        default=420,
        help="how long the operator's reconcile rounds may take (a window closes at the "
        "last attempt + the 10 s grace + 60 s; a crashed reconciler's lease lasts 300 s)",
    )
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    return Options(
        requests=args.requests,
        workers=args.workers,
        concurrency=args.concurrency,
        publish_seconds=args.publish_seconds or max(20.0, args.requests / 60),
        broker_restarts=args.broker_restarts,
        postgres_restarts=args.postgres_restarts,
        crash_share=args.crash_share,
        drain_timeout=args.drain_timeout,
        reconcile_timeout=args.reconcile_timeout,
        seed=args.seed,
        report=args.report,
    )


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like an exception, so the workers, vhost and database are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
