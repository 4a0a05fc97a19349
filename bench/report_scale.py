"""The "Scaling out" and "Steady over time" parts of docs/performance.md (their sections and
targets), and the soak's plot."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.phases import STAGES, Measured
from bench.scale_out import KILL_DROP, SHARE_SPREAD, ScaleOut, ScaleRun
from bench.soak import MEMORY_GROWTH, P99_GROWTH, Soak, change, growth, p99_per_minute

Target = tuple[str, str, bool]
SOAK_MINUTES = 30  # the soak the target asks for
BUDGET_USED = 0.95  # of the Redis budget, at least


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _s(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.1f}"


def _pct(share: float) -> str:
    return "-" if math.isnan(share) else ("∞" if math.isinf(share) else f"{share * 100:.1f} %")


def _drop(drop: float) -> str:
    if math.isnan(drop):
        return "not measured"
    return f"{abs(drop) * 100:.1f} % {'lower' if drop >= 0 else 'higher'}"


def _complete(m: Measured) -> bool:
    return m.answered == m.published and not m.failed


def _payments(run: ScaleRun) -> str:
    return ", ".join(f"{n} with {count}" for count, n in sorted(run.payments.items()))


# --- scaling out ----------------------------------------------------------------------------


def scale_out_targets(scale: ScaleOut) -> list[Target]:
    steady, killed, r = scale.steady, scale.killed, scale.recovery
    return [
        (
            f"{scale.deployments} deployments at the full budget: zero 429s",
            f"{steady.measured.rate_limited} (with one killed: {killed.measured.rate_limited})",
            steady.measured.rate_limited == 0,
        ),
        (
            f"{scale.deployments} deployments: >= {BUDGET_USED * 100:.0f} % of the budget used",
            f"{_pct(steady.budget_used)} ({steady.measured.stripe_requests} Stripe requests "
            f"in {steady.measured.seconds:.1f} s)",
            steady.budget_used >= BUDGET_USED,
        ),
        (
            f"each deployment's share within ± {SHARE_SPREAD * 100:.0f} % of the others "
            "(largest ÷ smallest)",
            f"{_pct(steady.spread)} apart ("
            + ", ".join(f"{h} {n}" for h, n in steady.answered_by.items())
            + ")",
            steady.spread <= SHARE_SPREAD and _complete(steady.measured) and steady.exactly_once,
        ),
        (
            f"one deployment SIGKILLed and restarted mid-run: throughput <= {KILL_DROP * 100:.0f} "
            "% lower, every debit answered once",
            f"{killed.load_throughput:.1f}/s vs {steady.load_throughput:.1f}/s: "
            f"{_drop(scale.drop)}; {killed.measured.answered}/{killed.measured.published} "
            f"answered, requests by payments {_payments(killed)}; its unfinished answered "
            f"{_s(r.held_answered_after)} s after the kill",
            scale.drop <= KILL_DROP and _complete(killed.measured) and killed.exactly_once,
        ),
    ]


def _run_row(run: ScaleRun) -> str:
    m = run.measured
    failed = sum(m.failed.values())
    slowest = m.slowest_window()
    return (
        f"| {m.name} | {m.published} | {m.answered} | {failed} | {run.load_throughput:.1f} | "
        f"{'-' if math.isnan(slowest) else f'{slowest:.1f}'} | {_ms(m.latency(0.5))} / "
        f"{_ms(m.latency(0.99))} | {m.rate_limited} | {_pct(run.budget_used)} | "
        f"{_payments(run)} |"
    )


def scale_out_section(scale: ScaleOut) -> list[str]:
    steady, killed, r = scale.steady, scale.killed, scale.recovery
    total = sum(steady.answered_by.values()) or 1
    hosts = list(dict.fromkeys([*steady.answered_by, *killed.answered_by]))
    finished = ", ".join(f"{who} {n}" for who, n in sorted(r.finished_by.items())) or "none"
    return [
        "## Scaling out",
        "",
        f"{scale.deployments} deployments, each `debit-worker run --processes "
        f"{scale.processes}` ({scale.threads} threads per process) with a host name of its "
        "own (`DEBIT_WORKER_HOST_NAME`), standing in for hosts, on one RabbitMQ vhost, one "
        f"ledger and one Redis budget of {steady.budget:g} requests/s; {steady.budget:g} "
        f"debits/s offered for {scale.duration:g} s (the whole budget). Then the same load "
        f"with `{r.host}` SIGKILLed (every process of it at once) {_s(r.killed_at)} s into "
        f"the run and restarted {_s(r.down_seconds)} s later. Who answered is read from the "
        "ledger (the actor of each outcome's audit entry); payments per request from the "
        "sandbox's own payments.",
        "",
        "| run | published | answered | of which failed | debits/s while loaded "
        "| slowest 10 s window /s | publish→event p50 / p99 ms | 429s "
        "| Stripe requests/s ÷ budget | requests by payments at the sandbox |",
        "|---|---|---|---|---|---|---|---|---|---|",
        _run_row(steady),
        _run_row(killed),
        "",
        "| deployment | answered | share | Stripe attempts | answered, one killed |",
        "|---|---|---|---|---|",
        *(
            f"| {h} | {steady.answered_by.get(h, 0)} | "
            f"{steady.answered_by.get(h, 0) / total * 100:.1f} % | "
            f"{steady.attempts_by.get(h, 0)} | {killed.answered_by.get(h, 0)} |"
            for h in hosts
        ),
        "",
        f"- `{r.host}` killed: {r.unfinished} debits were unanswered at that moment, "
        f"{r.held} of them claimed by `{r.host}`; the last of those was answered "
        f"**{_s(r.held_answered_after)} s** after the kill (of all {r.unfinished}: "
        f"{_s(r.all_answered_after)} s), {r.unanswered} never. Who finished them: {finished}.",
        f"- `{r.host}` consumed again {_s(r.consuming_after)} s after the kill (restarted "
        f"after {_s(r.down_seconds)} s). Throughput while loaded: **{_drop(scale.drop)}** "
        "than undisturbed.",
        "",
    ]


# --- steady over time -----------------------------------------------------------------------


def soak_targets(soak: Soak | None) -> list[Target]:
    if soak is None:
        return []
    w, m = soak.windows, soak.measured
    edge = f"{w.edge / 60:g} min"
    workers = soak.workers()
    rises = [growth(soak.series(label, "rss_mb"), w) for label in workers]
    counts = [
        change(soak.series(label, what), w) for label in workers for what in ("fds", "threads")
    ]
    counts += [change(soak.connection_series(kind), w) for kind in soak.connection_kinds()]
    first, last = soak.p99s
    restarted = soak.restarted()
    return [
        (
            f"a {SOAK_MINUTES}-minute soak at the full budget (>= {BUDGET_USED * 100:.0f} % "
            "of it offered), every debit answered",
            f"{soak.minutes:g} minutes at {soak.rate:g}/s ({_pct(soak.rate / soak.budget)} "
            f"of {soak.budget:g}), {m.answered}/{m.published} answered, "
            f"{sum(m.failed.values())} failed, {m.rate_limited} 429s",
            soak.minutes >= SOAK_MINUTES
            and soak.rate >= BUDGET_USED * soak.budget
            and _complete(m),
        ),
        (
            f"soak: memory of every worker process flat (<= {MEMORY_GROWTH * 100:.0f} % growth "
            f"after the first {edge})",
            f"largest growth {_pct(max(rises, default=math.nan))}"
            + (f"; restarted: {', '.join(restarted)}" if restarted else ""),
            bool(rises) and all(g <= MEMORY_GROWTH for g in rises) and not restarted,
        ),
        (
            "soak: no growth of open files, threads or connections",
            "none grew"
            if all(end <= base for base, end in counts)
            else f"{sum(1 for base, end in counts if not end <= base)} of {len(counts)} grew",
            bool(counts) and all(end <= base for base, end in counts),
        ),
        (
            f"soak: p99 of the last {edge} within {P99_GROWTH * 100:.0f} % of the first "
            "(not higher by more)",
            f"{_ms(first)} ms → {_ms(last)} ms ({_pct(soak.p99_change)})",
            soak.p99_change <= P99_GROWTH,
        ),
    ]


def soak_section(soak: Soak | None, plot_name: str) -> list[str]:
    if soak is None:
        return [
            "## Steady over time",
            "",
            "Not measured in this run: the soak takes 30 minutes, so `make bench` runs it "
            "only when asked (`make bench BENCH_ARGS=--soak`); "
            "`.venv/bin/python -m bench --only soak` runs it alone.",
            "",
        ]
    w, m = soak.windows, soak.measured
    first, last = soak.p99s
    backends = [(s.at, s.backends_rss_mb) for s in soak.samples]
    return [
        "## Steady over time",
        "",
        f"Our worker offered {soak.rate:g} debits/s on its budget of {soak.budget:g} Stripe "
        f"requests/s for {soak.minutes:g} minutes (not all of the budget: offered exactly "
        f"what it can serve, a queue has no steady state): {m.published} published, "
        f"{m.answered} answered, {sum(m.failed.values())} failed, {m.rate_limited} 429s. "
        f"Sampled every 10 s; each figure below is the median over the {w.tail:g} s after the "
        f"first {w.edge:g} s (baseline) and over the last {w.tail:g} s (end). The sandbox "
        "keeps every payment it made, so its memory grows with the run by design.",
        "",
        "| process | RSS MB baseline → end | growth | open files baseline → end "
        "| threads baseline → end |",
        "|---|---|---|---|---|",
        *(_process_row(soak, label) for label in soak.labels()),
        f"| PostgreSQL backends of the database | {_pair(change(backends, w), 0)} "
        f"| {_pct(growth(backends, w))} | - | - |",
        "",
        "| connections | baseline → end |",
        "|---|---|",
        *(
            f"| {_connection_name(kind)} | {_pair(change(soak.connection_series(kind), w), 0)} |"
            for kind in soak.connection_kinds()
        ),
        "",
        f"- p99 publish → event: {_ms(first)} ms for the commands published in the first "
        f"{w.edge:g} s, {_ms(last)} ms in the last {w.edge:g} s "
        f"({_pct(soak.p99_change)} change).",
        "",
        f"![memory, files, threads, connections and p99 over the soak]({plot_name})",
        "",
    ]


def _pair(values: tuple[float, float], digits: int) -> str:
    base, end = values
    return " → ".join("-" if math.isnan(v) else f"{v:.{digits}f}" for v in (base, end))


def _process_row(soak: Soak, label: str) -> str:
    w = soak.windows
    rss = soak.series(label, "rss_mb")
    return (
        f"| {label} | {_pair(change(rss, w), 0)} | {_pct(growth(rss, w))} "
        f"| {_pair(change(soak.series(label, 'fds'), w), 0)} "
        f"| {_pair(change(soak.series(label, 'threads'), w), 0)} |"
    )


def _connection_name(kind: str) -> str:
    if kind == "postgresql (server)":
        return "PostgreSQL's count for the database (pg_stat_activity)"
    return f"the workers' to {kind}"


def plot_soak(soak: Soak, path: Path) -> None:
    figure, (memory, counts, latency) = plt.subplots(3, 1, figsize=(13, 10), sharex=True)
    for label in soak.labels():
        xs, ys = _minutes(soak.series(label, "rss_mb"))
        memory.plot(xs, ys, label=label)
    memory.set_ylabel("RSS (MB)")
    memory.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    for label in soak.workers():
        for what in ("fds", "threads"):
            xs, ys = _minutes(soak.series(label, what))
            counts.plot(xs, ys, label=f"{label} {what}")
    for kind in soak.connection_kinds():
        xs, ys = _minutes(soak.connection_series(kind))
        counts.plot(xs, ys, linestyle="--", label=_connection_name(kind))
    counts.set_ylabel("count")
    counts.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    p99 = p99_per_minute(soak.measured.samples)
    latency.plot([m + 0.5 for m in range(len(p99))], [v * 1000 for v in p99], marker="o")
    latency.set_ylabel("p99 publish → event (ms)")
    latency.set_xlabel(
        "minutes since the load started (p99: by the minute commands were published)"
    )
    latency.set_ylim(bottom=0)
    memory.set_title(f"Soak: {soak.rate:g} debits/s for {soak.minutes:g} minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _minutes(series: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [at / 60 for at, _ in series], [v for _, v in series]


# --- what `python -m bench` prints ----------------------------------------------------------


def say_scale_out(scale: ScaleOut) -> list[str]:
    r = scale.recovery
    lines = [
        f"{run.measured.name}: {run.measured.answered}/{run.measured.published}, "
        f"{run.load_throughput:.1f}/s while loaded, p99 {_ms(run.measured.latency(0.99))} ms, "
        f"429s {run.measured.rate_limited}, budget used {_pct(run.budget_used)}, answered by "
        + ", ".join(f"{h} {n}" for h, n in run.answered_by.items())
        + f" (spread {_pct(run.spread)}), requests by payments {_payments(run)}"
        + (f", FAILED {run.measured.failed}" if run.measured.failed else "")
        for run in (scale.steady, scale.killed)
    ]
    lines.append(
        f"{r.host} killed at {_s(r.killed_at)} s, restarted {_s(r.down_seconds)} s later, "
        f"consuming again after {_s(r.consuming_after)} s: {r.unfinished} unfinished "
        f"({r.held} claimed by it), its last answered {_s(r.held_answered_after)} s after the "
        f"kill (all: {_s(r.all_answered_after)} s), {r.unanswered} never; finished by "
        f"{r.finished_by or 'nobody'}; throughput {_drop(scale.drop)}"
    )
    return lines


def say_soak(soak: Soak) -> list[str]:
    m, w = soak.measured, soak.windows
    first, last = soak.p99s
    lines = [
        f"soak of {soak.minutes:g} min: {m.answered}/{m.published}, 429s {m.rate_limited}, "
        f"p99 first {w.edge:g} s {_ms(first)} ms, last {_ms(last)} ms "
        f"({_pct(soak.p99_change)}), {len(soak.samples)} samples"
        + (f", FAILED {m.failed}" if m.failed else "")
    ]
    for label in soak.labels():
        rss = soak.series(label, "rss_mb")
        lines.append(
            f"  {label}: RSS {_pair(change(rss, w), 0)} MB ({_pct(growth(rss, w))}), files "
            f"{_pair(change(soak.series(label, 'fds'), w), 0)}, threads "
            f"{_pair(change(soak.series(label, 'threads'), w), 0)}"
        )
    lines += [
        f"  {_connection_name(kind)}: {_pair(change(soak.connection_series(kind), w), 0)}"
        for kind in soak.connection_kinds()
    ]
    if soak.stages_by_minute:
        lines.append("  p99 ms of each stage, by the minute commands were published:")
        lines += [
            f"    {name}: " + " ".join(_ms(minute[name]) for minute in soak.stages_by_minute)
            for name, _, _ in STAGES
        ]
    return lines
