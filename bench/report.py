"""docs/performance.md and its plot, from one run's measurements."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.ledger_size import LedgerSize
from bench.phases import Measured
from bench.reconcile import COST_DAY_DEBITS, DayProofMeasured, ReconcileCost
from bench.report_ledger import ledger_section, ledger_targets
from bench.report_scale import scale_out_section, scale_out_targets, soak_section, soak_targets
from bench.scale_out import ScaleOut
from bench.soak import Soak

STRIPE_P99_S = 1.0
SOAK_PLOT = "soak.png"  # beside the report
PROOF_DEBITS = 1_000_000  # the daily proof's target size
PROOF_DENSITY = 90  # debits per list request, at least
COST_DROP = 0.05  # debit throughput lost while the proof runs, at most


@dataclass(frozen=True)
class Run:
    ours: Measured
    naive: Measured
    fast: Measured
    noop: Measured
    rate: float
    duration: float
    command: str
    processes: int = 1
    threads: int = 64
    day: DayProofMeasured | None = None  # reconcile-day
    cost: ReconcileCost | None = None  # reconcile-cost
    scale: ScaleOut | None = None  # scale-out
    soak: Soak | None = None  # soak (only with --soak)
    size: LedgerSize | None = None  # ledger-size


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return (
        f"{os.cpu_count()} CPUs (nproc), {mem_kib / 1024 / 1024:.1f} GiB memory, {cpu}; "
        f"Python {platform.python_version()}; RabbitMQ, PostgreSQL, Redis, the sandbox, the "
        "load generator and the workers all on this machine"
    )


def plot(run: Run, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(10, 5))
    for measured, colour in ((run.naive, "tab:red"), (run.ours, "tab:blue")):
        if measured.samples:
            xs, ys = zip(*measured.samples, strict=True)
            axis.scatter(xs, ys, s=2, color=colour, label=f"{measured.name}")
    axis.axhline(STRIPE_P99_S + 0.1, color="grey", linestyle="--", label="Stripe p99 + 100 ms")
    axis.set_yscale("log")
    axis.set_xlabel("seconds since the first command was published")
    axis.set_ylabel("publish → event (s, log scale)")
    axis.set_title(
        f"Publish-to-event latency, {run.rate:g} debits/s offered, Stripe p50 300 ms / p99 1 s"
    )
    axis.legend(loc="upper left", markerscale=5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _latencies(m: Measured) -> str:
    """publish → event p50 / p99 / max, ms."""
    if not m.samples:
        return "-"
    return (
        f"{m.latency(0.5) * 1000:.0f} / {m.latency(0.99) * 1000:.0f} / "
        f"{max(s[1] for s in m.samples) * 1000:.0f}"
    )


def _row(m: Measured) -> str:
    return (
        f"| {m.name} | {m.published} | {m.answered} | {_failed(m)} | {m.throughput:.1f} | "
        f"{_number(m.slowest_window())} | {_latencies(m)} | {m.rate_limited} | "
        f"{m.requests_per_debit:.3f} | "
        f"{m.rss_main_mb:.0f} / {m.rss_tree_mb:.0f} |"
    )


def _stage(m: Measured, stage: str) -> str:
    if stage not in m.stages:
        return "-"
    p50, p99 = m.stages[stage]
    return f"{p50 * 1000:.0f} / {p99 * 1000:.0f}"


def len_failed(m: Measured) -> int:
    return sum(m.failed.values())


def _failed(m: Measured) -> str:
    if not m.failed:
        return "0"
    codes = ", ".join(f"{code} {n}" for code, n in sorted(m.failed.items()))
    return f"{len_failed(m)} ({codes})"


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(run: Run, plot_name: str, extra: str) -> str:
    ours, naive, fast, noop = run.ours, run.naive, run.fast, run.noop
    p99 = ours.latency(0.99)
    sustained = ours.slowest_window()
    ratio = fast.throughput / noop.throughput if noop.throughput else float("nan")
    targets = [
        (
            "every debit answered, and answered DebitSucceeded (ours, both runs)",
            f"{ours.answered - len_failed(ours)}/{ours.published} and "
            f"{fast.answered - len_failed(fast)}/{fast.published} succeeded",
            all(m.answered == m.published and not m.failed for m in (ours, fast)),
        ),
        (
            f">= 95 debits/s sustained for >= 60 s ({run.duration:g} s run)",
            f"{ours.throughput:.1f}/s overall, slowest 10 s window {sustained:.1f}/s",
            ours.throughput >= 95 and sustained >= 95 and run.duration >= 60,
        ),
        ("zero 429s from the sandbox", str(ours.rate_limited), ours.rate_limited == 0),
        (
            "p99 publish → event <= Stripe p99 + 100 ms (1,100 ms)",
            f"{p99 * 1000:.0f} ms (commands published after the first 10 s: "
            f"{ours.latency(0.99, after=10) * 1000:.0f} ms)",
            p99 <= STRIPE_P99_S + 0.1,
        ),
        (
            "<= 1.05 Stripe requests per debit",
            f"{ours.requests_per_debit:.3f}",
            ours.requests_per_debit <= 1.05,
        ),
        (
            "zero latency, no budget: >= 300 debits/s",
            f"{fast.throughput:.0f}/s ({ratio:.2f} x the bare no-op's {noop.throughput:.0f}/s)",
            fast.throughput >= 300,
        ),
        (
            "worker resident memory <= 150 MB (largest worker process)",
            f"{max(ours.rss_main_mb, fast.rss_main_mb):.0f} MB",
            max(ours.rss_main_mb, fast.rss_main_mb) <= 150,
        ),
        *_reconcile_targets(run),
        *(scale_out_targets(run.scale) if run.scale is not None else []),
        *soak_targets(run.soak),
        *ledger_targets(run.size),
    ]
    lines = [
        "# Performance",
        "",
        "Written by the benchmark (`bench/`); do not edit by hand, run it again.",
        "",
        f"- **Date:** {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- **Machine:** {machine()}",
        f"- **Command:** `{run.command}`",
        f"- **Load:** {run.rate:g} debits/s offered for {run.duration:g} s to each worker, "
        "20 connected accounts round-robin, 1 cent each; sandbox latency lognormal p50 300 ms "
        "/ p99 1 s, its rate limiter at 100 requests/s (burst 100).",
        f"- **Ours:** `debit-worker run --processes {run.processes}`, {run.threads} threads "
        "per process (the bare no-op the same); the naive worker: Celery's defaults.",
        "",
        "## Results",
        "",
        "| run | published | answered | of which failed | debits/s | slowest 10 s window /s "
        "| publish→event p50 / p99 / max ms | 429s | Stripe requests/debit "
        "| RSS largest process / all processes MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        _row(ours),
        _row(naive),
        _row(fast),
        f"| {noop.name} | {noop.published} | {noop.answered} | - | {noop.throughput:.0f} | - "
        "| - | - | - | - |",
        "",
        f"- Ours vs the naive worker, same offered load: **{_ratio(ours, naive)}x** the "
        f"throughput; Stripe requests per debit {ours.requests_per_debit:.3f} vs "
        f"{naive.requests_per_debit:.3f}.",
        f"- Whole pipeline at zero latency vs a bare Celery no-op task, same run: **{ratio:.2f}**.",
        "",
        "Where the time goes (ours), from the ledger's timestamps of each request: claimed "
        "(its row written), first Stripe call, outcome recorded; p50 / p99 ms:",
        "",
        "| stage | " + " | ".join(m.name for m in (ours, fast)) + " |",
        "|---|---|---|",
        *(
            f"| {stage} | " + " | ".join(_stage(m, stage) for m in (ours, fast)) + " |"
            for stage in dict.fromkeys([*ours.stages, *fast.stages])
        ),
        "",
        "CPU milliseconds per debit, by what used it (the whole machine: workers, services, "
        "the benchmark's own load generator and listener; kernel = system time of all):",
        "",
        "| | " + " | ".join(m.name for m in (ours, fast)) + " |",
        "|---|---|---|",
        *(
            f"| {what} | "
            + " | ".join(f"{m.cpu_ms[what]:.2f}" if what in m.cpu_ms else "-" for m in (ours, fast))
            + " |"
            for what in dict.fromkeys([*ours.cpu_ms, *fast.cpu_ms])
        ),
        "",
        f"![publish-to-event latency over time]({plot_name})",
        "",
        *_reconcile_section(run),
        *(scale_out_section(run.scale) if run.scale is not None else []),
        *soak_section(run.soak, SOAK_PLOT),
        *ledger_section(run.size),
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {what} | {value} | {_check(ok)} |" for what, value, ok in targets),
        "",
        extra.strip(),
        "",
    ]
    return "\n".join(lines)


def _ratio(a: Measured, b: Measured) -> str:
    return f"{a.throughput / b.throughput:.0f}" if b.throughput else "∞"


def _reconcile_targets(run: Run) -> list[tuple[str, str, bool]]:
    targets = []
    if run.day is not None:
        day = run.day
        targets.append(
            (
                f"daily proof of {PROOF_DEBITS:,} debits: <= 1 list request per "
                f"{PROOF_DENSITY} debits, 0 unexplained",
                f"{day.debits:,} debits: {day.list_requests:,} list requests "
                f"({_number(day.debits_per_list_request)} debits each), {day.matched:,} "
                f"matched, {day.unexplained} unexplained, {day.seconds:.0f} s",
                day.debits >= PROOF_DEBITS
                and day.debits_per_list_request >= PROOF_DENSITY
                and day.unexplained == 0,
            )
        )
    if run.cost is not None:
        cost = run.cost
        targets.append(
            (
                f"debit throughput with the daily proof running: <= {COST_DROP * 100:.0f} % lower "
                "than without",
                f"{cost.during.throughput:.1f}/s with, {cost.alone.throughput:.1f}/s without: "
                f"{change(cost.drop)}; {cost.list_requests} list requests meanwhile"
                + ("" if cost.proof_throughout else " (the proof ended before the run did)"),
                cost.drop <= COST_DROP
                and cost.proof_throughout
                and all(
                    m.answered == m.published and not m.failed for m in (cost.alone, cost.during)
                ),
            )
        )
    return targets


def change(drop: float) -> str:
    """A drop in throughput as words: "1.2 % lower", or "0.4 % higher" when it rose."""
    if math.isnan(drop):
        return "not measured"
    return f"{abs(drop) * 100:.1f} % {'lower' if drop >= 0 else 'higher'}"


def _reconcile_section(run: Run) -> list[str]:
    lines: list[str] = []
    if run.day is None and run.cost is None:
        return lines
    lines += ["## Closing the books", ""]
    if run.day is not None:
        day = run.day
        lines += [
            f"The daily proof of a day of {day.debits:,} account debits, generated at the "
            "sandbox in bulk and seeded in the ledger as succeeded (one COPY, "
            f"{day.seed_seconds:.0f} s), proved by `debit-worker reconcile --day D --json` in a "
            "process of its own, on the workers' Redis budget (100 requests/s, list reads on "
            "spare tokens); the sandbox without latency, its limiter at 100 requests/s:",
            "",
            "| debits | seconds (process / proof) | list requests (proof / sandbox) "
            "| debits per list request | matched | unexplained | 429s "
            "| peak RSS of the process MB |",
            "|---|---|---|---|---|---|---|---|",
            f"| {day.debits:,} | {day.seconds:.1f} / {day.proof_seconds:.1f} "
            f"| {day.list_requests:,} / {day.sandbox_list_requests:,} "
            f"| {_number(day.debits_per_list_request)} | {day.matched:,} | {day.unexplained} "
            f"| {day.rate_limited} | {day.rss_peak_mb:.0f} |",
            "",
        ]
    if run.cost is not None:
        cost = run.cost
        lines += [
            'Debit throughput with and without the daily proof: the load of "ours" twice, '
            "alone and while `debit-worker reconcile --day D` of a generated day of "
            f"{COST_DAY_DEBITS:,} charges reads Stripe's charges on the same Redis budget "
            "(the load starts once it has made its first list request; it is stopped after "
            "the run):",
            "",
            "| run | published | answered | of which failed | debits/s "
            "| slowest 10 s window /s | publish→event p50 / p99 / max ms | 429s "
            "| list requests meanwhile |",
            "|---|---|---|---|---|---|---|---|---|",
            _cost_row(cost.alone, "-"),
            _cost_row(cost.during, str(cost.list_requests)),
            "",
            f"- Throughput with the proof running: **{change(cost.drop)}**"
            + ("." if cost.proof_throughout else " (the proof ended before the run did)."),
            "",
        ]
    return lines


def _cost_row(m: Measured, list_requests: str) -> str:
    return (
        f"| {m.name} | {m.published} | {m.answered} | {_failed(m)} | {m.throughput:.1f} | "
        f"{_number(m.slowest_window())} | {_latencies(m)} | {m.rate_limited} "
        f"| {list_requests} |"
    )
