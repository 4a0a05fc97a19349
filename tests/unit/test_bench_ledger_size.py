"""The benchmark's ledger-size phase, its pure parts: bytes per debit, growth per year, and
how the figures are judged against the targets."""

from __future__ import annotations

import pytest

from bench.ledger_size import SECONDS_PER_YEAR, LedgerSize
from bench.phases import Measured
from bench.report_ledger import ledger_section, ledger_targets


def a_run(name: str, throughput: float, p99_s: float) -> Measured:
    answered = int(throughput * 60)
    # 100 samples: 98 fast ones and two at p99, so the 99th percentile is `p99_s`
    samples = [(float(i), 0.3) for i in range(98)] + [(98.0, p99_s), (99.0, p99_s)]
    return Measured(name, answered, answered, 60.0, samples=samples)


def a_size(
    seeded: int = 10_000_000,
    full: tuple[float, float] = (96.0, 1.05),
    lookups_ms: float = 2.0,
) -> LedgerSize:
    return LedgerSize(
        seeded=seeded,
        seed_seconds=300.0,
        empty=a_run("ours, empty ledger", 97.0, 1.0),
        full=a_run("ours, full ledger", *full),
        status_ms=[lookups_ms] * 200,
        list_ms=[lookups_ms] * 200,
        status_cli_ms=400.0,
        list_cli_ms=450.0,
        table_bytes={
            "debit_requests": 800 * seeded,
            "outbox": 1000 * seeded,
            "audit_log": 600 * seeded,
            "consents": 0,
        },
    )


def test_bytes_per_debit_are_what_the_seeding_added_to_each_table_per_request() -> None:
    # Given a ledger the seeding grew by 800, 1000 and 600 bytes per request
    size = a_size()
    # When its bytes per debit are read
    # Then each table that grew is named with its share, and the untouched one is left out
    assert size.bytes_per_debit() == {"debit_requests": 800, "outbox": 1000, "audit_log": 600}


def test_growth_per_year_counts_the_outbox_only_without_its_retention() -> None:
    # Given 2,400 bytes per debit, 1,000 of them in the outbox
    size = a_size()
    # When the growth per year at 25 debits/s is computed
    # Then every row kept grows by all of it; with the retention, by the rest only
    assert size.growth_per_year(25, retention=False) == 2400 * 25 * SECONDS_PER_YEAR
    assert size.growth_per_year(25, retention=True) == 1400 * 25 * SECONDS_PER_YEAR
    # And the outbox then holds seven days of events
    assert size.outbox_at_retention(25) == 1000 * 25 * 7 * 86_400


@pytest.mark.parametrize(
    ("size", "met"),
    [
        (a_size(), [True, True, True]),
        (a_size(full=(90.0, 1.05)), [False, True, True]),  # 7 % slower
        (a_size(full=(96.0, 1.2)), [True, False, True]),  # p99 20 % higher
        (a_size(lookups_ms=60.0), [True, True, False]),
        (a_size(seeded=200_000), [False, False, False]),  # too small to say
    ],
)
def test_the_targets_are_met_only_at_ten_million_and_within_their_margins(
    size: LedgerSize, met: list[bool]
) -> None:
    # Given a measured ledger-size phase
    # When it is judged against the targets
    judged = [ok for _, _, ok in ledger_targets(size)]
    # Then each target is met exactly when its figure is within its margin at that size
    assert judged == met


def test_the_section_names_both_runs_the_lookups_and_the_growth_at_both_rates() -> None:
    # Given a measured ledger-size phase
    # When its section of the report is written
    text = "\n".join(ledger_section(a_size()))
    # Then it has both runs, both lookups and a growth row for 25 and for 100 debits/s
    assert "## Ledger at size" in text
    assert "| ours, empty ledger |" in text
    assert "| ours, full ledger |" in text
    assert "`debit-worker status ID`" in text
    assert "`debit-worker requests list --account A`" in text
    assert "\n| 25 | " in text
    assert "\n| 100 | " in text
