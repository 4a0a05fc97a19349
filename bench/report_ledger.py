"""The "Ledger at size" section of docs/performance.md, its targets, and its console lines."""

from __future__ import annotations

import math
from typing import Final

from bench.ledger_size import RETAINED_TABLE, RETENTION_DAYS, LedgerSize
from bench.load import percentile
from bench.phases import Measured

LEDGER_ROWS: Final = 10_000_000  # the size the targets are set at
THROUGHPUT_DROP: Final = 0.05  # at most, against the empty ledger
P99_RISE: Final = 0.10  # at most, against the empty ledger
LOOKUP_P99_MS: Final = 50.0
RATES: Final = (25, 100)  # debits/s the growth per year is given at


def _ms(values: list[float]) -> str:
    """p50 / p99 / max in ms."""
    if not values:
        return "-"
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f} / {max(values):.1f}"


def _pct(share: float, up: str, down: str) -> str:
    if math.isnan(share):
        return "not measured"
    return f"{abs(share) * 100:.1f} % {up if share >= 0 else down}"


def _gb(size: float) -> str:
    return f"{size / 1e9:,.0f} GB" if size >= 1e10 else f"{size / 1e9:,.1f} GB"


def _answered(m: Measured) -> bool:
    return m.answered == m.published and not m.failed


def complete(size: LedgerSize) -> bool:
    return _answered(size.empty) and _answered(size.full)


def say_ledger(size: LedgerSize) -> list[str]:
    per_debit = size.bytes_per_debit()
    return [
        f"ledger at size: {size.seeded:,} requests seeded in {size.seed_seconds:.0f} s; "
        f"{size.empty.throughput:.1f}/s → {size.full.throughput:.1f}/s "
        f"({_pct(size.drop, 'lower', 'higher')}), p99 {size.empty.latency(0.99) * 1000:.0f} → "
        f"{size.full.latency(0.99) * 1000:.0f} ms ({_pct(size.p99_rise, 'higher', 'lower')})",
        f"  status ID p50/p99/max {_ms(size.status_ms)} ms (CLI {size.status_cli_ms:.0f} ms); "
        f"requests list --account {_ms(size.list_ms)} ms (CLI {size.list_cli_ms:.0f} ms)",
        f"  bytes per debit {sum(per_debit.values()):,.0f}: "
        + ", ".join(f"{table} {value:,.0f}" for table, value in per_debit.items()),
    ]


def ledger_section(size: LedgerSize | None) -> list[str]:
    if size is None:
        return []
    per_debit = size.bytes_per_debit()
    total = sum(per_debit.values())
    rows = [
        f"| {m.name} | {m.published} | {m.answered} | {sum(m.failed.values())} "
        f"| {m.throughput:.1f} | {m.latency(0.5) * 1000:.0f} / {m.latency(0.99) * 1000:.0f} "
        f"/ {max((s[1] for s in m.samples), default=0) * 1000:.0f} |"
        for m in (size.empty, size.full)
    ]
    growth = [
        f"| {rate} | {_gb(size.growth_per_year(rate, retention=False))} "
        f"| {_gb(size.growth_per_year(rate, retention=True))} "
        f"+ {RETAINED_TABLE} {_gb(size.outbox_at_retention(rate))} |"
        for rate in RATES
    ]
    return [
        "## Ledger at size",
        "",
        f'The load of "ours" on the ledger before and after {size.seeded:,} finished '
        f"requests were written into it ({size.seed_seconds:.0f} s, each request with its "
        "audit entries and its sent event, cloned from one the worker finished), then the "
        "operators' lookups at that size:",
        "",
        "| run | published | answered | of which failed | debits/s "
        "| publish→event p50 / p99 / max ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"- Throughput on the seeded ledger: **{_pct(size.drop, 'lower', 'higher')}**; p99 "
        f"publish → event **{_pct(size.p99_rise, 'higher', 'lower')}**.",
        "",
        f"| lookup ({len(size.status_ms)} random requests or accounts) | p50 / p99 / max ms "
        "| one CLI process, start to exit, ms |",
        "|---|---|---|",
        f"| `debit-worker status ID` (the request, its events, its history) "
        f"| {_ms(size.status_ms)} | {size.status_cli_ms:.0f} |",
        f"| `debit-worker requests list --account A` (newest 50) | {_ms(size.list_ms)} "
        f"| {size.list_cli_ms:.0f} |",
        "",
        "Bytes per debit in the ledger (heap, indexes and TOAST the seeded requests added, "
        "divided by their number):",
        "",
        "| " + " | ".join(per_debit) + " | all |",
        "|" + "---|" * (len(per_debit) + 1),
        "| " + " | ".join(f"{value:,.0f}" for value in per_debit.values()) + f" | {total:,.0f} |",
        "",
        f"| debits/s | growth per year, every row kept | with the {RETENTION_DAYS}-day "
        "retention of sent events (+ the outbox's constant size) |",
        "|---|---|---|",
        *growth,
        "",
    ]


def ledger_targets(size: LedgerSize | None) -> list[tuple[str, str, bool]]:
    if size is None:
        return []
    big = size.seeded >= LEDGER_ROWS
    at = f"{size.seeded:,} requests"
    status_p99, list_p99 = percentile(size.status_ms, 0.99), percentile(size.list_ms, 0.99)
    return [
        (
            f"ledger of >= {LEDGER_ROWS:,} finished requests: debits/s within "
            f"{THROUGHPUT_DROP * 100:.0f} % of the empty ledger's",
            f"{at}: {size.full.throughput:.1f}/s against {size.empty.throughput:.1f}/s, "
            f"{_pct(size.drop, 'lower', 'higher')}",
            big and complete(size) and size.drop <= THROUGHPUT_DROP,
        ),
        (
            f"the same: p99 publish → event within {P99_RISE * 100:.0f} % of the empty ledger's",
            f"{at}: {size.full.latency(0.99) * 1000:.0f} ms against "
            f"{size.empty.latency(0.99) * 1000:.0f} ms, {_pct(size.p99_rise, 'higher', 'lower')}",
            big and size.p99_rise <= P99_RISE,
        ),
        (
            f"at that size: `status ID` and `requests list --account` p99 < {LOOKUP_P99_MS:.0f} ms",
            f"{at}: {status_p99:.1f} ms and {list_p99:.1f} ms",
            big and max(status_p99, list_p99) < LOOKUP_P99_MS,
        ),
    ]
