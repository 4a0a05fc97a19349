"""`python -m bench` (`make bench`): our worker and a naive one, measured in the same run,
and what the daily proof of a day costs (reconcile-day, reconcile-cost).

Starts everything it needs (own RabbitMQ vhost, own PostgreSQL database, a sandbox process,
the workers as processes), then writes docs/performance.md and docs/performance.png.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import uuid
from pathlib import Path

from bench import phases, reconcile
from bench.ledger_size import LedgerSize, ledger_size
from bench.report import SOAK_PLOT, Run, change, markdown, plot
from bench.report_ledger import complete as ledger_complete
from bench.report_ledger import say_ledger
from bench.report_scale import plot_soak, say_scale_out, say_soak
from bench.scale_out import ScaleOut, scale_out
from bench.services import own_services, sandbox_process
from bench.soak import Soak, soak
from bench.startup import kept_section

ROOT = Path(__file__).resolve().parent.parent
EXTRA = ROOT / "bench" / "METHOD.md"  # how to run it and what each figure means


PHASES = (
    "ours",
    "naive",
    "zero-latency",
    "noop",
    "reconcile-day",
    "reconcile-cost",
    "scale-out",
    "soak",
    "ledger-size",
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of steady load")
    parser.add_argument("--rate", type=float, default=97.0, help="debits/s offered")
    parser.add_argument("--backlog", type=int, help="zero-latency commands [6000; quick 1500]")
    parser.add_argument("--noop", type=int, help="bare no-op tasks [20000; quick 3000]")
    parser.add_argument(
        "--day-debits", type=int, help="debits of the day the proof reads [1000000; quick 20000]"
    )
    parser.add_argument(
        "--concurrency", type=int, help="threads per worker process [64 / processes]"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="our worker processes (`run --processes`) [one per core]",
    )
    parser.add_argument(
        "--deployments",
        type=int,
        default=2,
        help="scale-out: `debit-worker run` deployments side by side, sharing --processes "
        "between them [2]",
    )
    parser.add_argument(
        "--soak",
        action="store_true",
        help="include the soak (--soak-minutes of full load) in the full run",
    )
    parser.add_argument("--soak-minutes", type=float, help="length of the soak [30; quick 2]")
    parser.add_argument(
        "--ledger-rows",
        type=int,
        help="ledger-size: finished requests seeded in the ledger [10000000; quick 200000]",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: ~10 s per phase")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument(
        "--only",
        choices=PHASES,
        help="run this one phase, print its figures and write no report (for development)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 10.0
    args.backlog = args.backlog or (1500 if args.quick else 6000)
    args.noop = args.noop or (3000 if args.quick else 20000)
    args.day_debits = args.day_debits or (20_000 if args.quick else 1_000_000)
    args.soak_minutes = args.soak_minutes or (2.0 if args.quick else 30.0)
    args.ledger_rows = args.ledger_rows or (200_000 if args.quick else 10_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    command = "make bench" + (
        f" BENCH_ARGS={shlex.quote(' '.join(sys.argv[1:]))}" if sys.argv[1:] else ""
    )
    logs = Path(tempfile.mkdtemp(prefix="debit-bench-"))
    api_key = f"sk_test_bench{uuid.uuid4().hex}"
    with own_services() as services, sandbox_process(api_key) as admin:
        threads = args.concurrency or max(1, 64 // args.processes)
        setup = phases.Setup(services, admin, api_key, logs, threads, args.processes)
        print(f"logs in {logs}", flush=True)
        if args.only:
            return _only(args.only, setup, args)
        ours = phases.ours_at_stripe_rate(setup, args.rate, args.duration)
        _say(ours)
        naive = phases.naive_at_stripe_rate(setup, args.rate, args.duration)
        _say(naive)
        fast = phases.ours_without_latency(setup, args.backlog)
        _say(fast)
        noop = phases.bare_celery_noop(setup, args.noop, threads)
        _say(noop)
        day = reconcile.reconcile_day(setup, args.day_debits)
        _say_day(day)
        cost = reconcile.reconcile_cost(setup, args.rate, args.duration)
        _say_cost(cost)
        scale = _scale_out(setup, args)
        soaked = _soak(setup, args) if args.soak else None
        # Last: it leaves millions of rows in the ledger; compared with the first "ours".
        size = _ledger_size(setup, args, ours)
        problems = admin.problems()
    run = Run(
        ours,
        naive,
        fast,
        noop,
        args.rate,
        args.duration,
        command,
        args.processes,
        threads,
        day=day,
        cost=cost,
        scale=scale,
        soak=soaked,
        size=size,
    )
    png = args.output.with_suffix(".png")
    plot(run, png)
    if soaked is not None:
        plot_soak(soaked, args.output.with_name(SOAK_PLOT))
    # The Start-up section is measured and written by `python -m bench.startup --write`.
    extra = kept_section(args.output) + "\n\n" + (EXTRA.read_text() if EXTRA.exists() else "")
    args.output.write_text(markdown(run, png.name, extra))
    print(f"wrote {args.output} and {png}; sandbox money problems: {problems or 'none'}")
    complete = all(
        m.answered == m.published and not m.failed for m in (ours, fast, cost.alone, cost.during)
    )
    complete = complete and scale.ok and (soaked is None or soaked.complete)
    complete = complete and ledger_complete(size)
    return 0 if complete and not day.unexplained and not problems else 1


def _only(phase: str, setup: phases.Setup, args: argparse.Namespace) -> int:
    phases.declare_topology(setup)  # the full run's first phase leaves it declared
    if phase == "scale-out":
        return 0 if _scale_out(setup, args).ok else 1
    if phase == "ledger-size":  # its own empty-ledger run first
        return 0 if ledger_complete(_ledger_size(setup, args, None)) else 1
    if phase == "soak":
        soaked = _soak(setup, args)
        plot_soak(soaked, setup.logs / SOAK_PLOT)  # no report: the plot stays with the logs
        print(f"plot in {setup.logs / SOAK_PLOT}", flush=True)
        return 0 if soaked.complete else 1
    if phase == "reconcile-day":
        day = reconcile.reconcile_day(setup, args.day_debits)
        _say_day(day)
        return 0 if not day.unexplained else 1
    if phase == "reconcile-cost":
        cost = reconcile.reconcile_cost(setup, args.rate, args.duration)
        _say_cost(cost)
        runs = (cost.alone, cost.during)
        return 0 if all(m.answered == m.published and not m.failed for m in runs) else 1
    if phase == "ours":
        measured = phases.ours_at_stripe_rate(setup, args.rate, args.duration)
    elif phase == "naive":
        measured = phases.naive_at_stripe_rate(setup, args.rate, args.duration)
    elif phase == "zero-latency":
        measured = phases.ours_without_latency(setup, args.backlog)
    else:
        measured = phases.bare_celery_noop(setup, args.noop, setup.concurrency or 1)
    _say(measured)
    return 0 if measured.answered == measured.published and not measured.failed else 1


def _scale_out(setup: phases.Setup, args: argparse.Namespace) -> ScaleOut:
    """As many processes in all as the other phases' worker, split between deployments."""
    per = max(1, args.processes // args.deployments)
    threads = args.concurrency or max(1, 64 // (per * args.deployments))
    scale = scale_out(setup, args.deployments, per, threads, args.duration)
    print("\n".join(say_scale_out(scale)), flush=True)
    return scale


def _ledger_size(
    setup: phases.Setup, args: argparse.Namespace, empty: phases.Measured | None
) -> LedgerSize:
    size = ledger_size(setup, args.rate, args.duration, args.ledger_rows, empty)
    print("\n".join(say_ledger(size)), flush=True)
    return size


def _soak(setup: phases.Setup, args: argparse.Namespace) -> Soak:
    soaked = soak(setup, args.soak_minutes, args.rate)
    print("\n".join(say_soak(soaked)), flush=True)
    return soaked


def _say(m: phases.Measured) -> None:
    print(
        f"{m.name}: {m.answered}/{m.published} in {m.seconds:.1f} s = {m.throughput:.1f}/s, "
        f"p99 {m.latency(0.99) * 1000:.0f} ms (after 10 s {m.latency(0.99, 10) * 1000:.0f}), "
        f"429s {m.rate_limited}, "
        f"requests/debit {m.requests_per_debit:.3f}, RSS {m.rss_main_mb:.0f} MB"
        + (f", FAILED {m.failed}" if m.failed else ""),
        flush=True,
    )
    if m.cpu_ms:
        print("  CPU ms/debit: " + ", ".join(f"{k} {v:.2f}" for k, v in m.cpu_ms.items()))
    for stage, (p50, p99) in m.stages.items():
        print(f"  {stage}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms", flush=True)


def _say_day(d: reconcile.DayProofMeasured) -> None:
    print(
        f"daily proof of {d.debits} debits ({d.status}): {d.seconds:.1f} s (the proof "
        f"{d.proof_seconds:.1f} s; seeding {d.seed_seconds:.1f} s), {d.list_requests} list "
        f"requests (sandbox: {d.sandbox_list_requests}) = {d.debits_per_list_request:.1f} "
        f"debits each, {d.matched} matched, {d.unexplained} unexplained, 429s "
        f"{d.rate_limited}, peak RSS {d.rss_peak_mb:.0f} MB",
        flush=True,
    )


def _say_cost(c: reconcile.ReconcileCost) -> None:
    _say(c.alone)
    _say(c.during)
    print(
        f"with the proof running: {change(c.drop)}, {c.list_requests} list requests meanwhile"
        + ("" if c.proof_throughout else "; the proof ENDED before the run did"),
        flush=True,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
