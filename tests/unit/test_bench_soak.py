"""The benchmark's soak, its pure parts: the windows a soak is judged on, growth of memory and
counts after the warm-up, p99 per minute and first against last, and how the report judges
it."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

from bench.phases import STAGES, Measured
from bench.procfs import ProcessStat, connections
from bench.report import Run, markdown
from bench.report_scale import plot_soak
from bench.soak import (
    Sample,
    Soak,
    Windows,
    change,
    growth,
    p99_first_last,
    p99_per_minute,
    stages_by_minute,
)


def test_a_thirty_minute_soak_is_judged_on_five_minute_edges_and_one_minute_medians() -> None:
    # Given a 30-minute soak and a 2-minute one
    long, short = Windows(1800), Windows(120)
    # When their windows are read
    # Then the long one has the 5-minute edges the targets name; the short one a third of it
    assert (long.edge, long.tail) == (300, 60)
    assert (short.edge, short.tail) == (40, 20)
    # And the baseline is the minute after the first five, the end the last minute
    assert [long.baseline(at) for at in (299, 300, 359, 360)] == [False, True, True, False]
    assert [long.end(at) for at in (1739, 1740, 1800)] == [False, True, True]


def test_growth_is_measured_after_the_warm_up_from_medians() -> None:
    # Given memory that climbs during the warm-up, then holds but for one spike, over 30 min
    windows = Windows(1800)
    series = [(at, 50.0 + at / 10 if at < 300 else 80.0) for at in range(0, 1801, 10)]
    series[-3] = (series[-3][0], 200.0)  # one sample's spike in the last minute
    # When its growth is computed
    # Then neither the warm-up nor the lone spike counts: it is flat
    assert change(series, windows) == (80.0, 80.0)
    assert growth(series, windows) == 0.0


def test_memory_that_keeps_climbing_grows() -> None:
    # Given memory that climbs by 1 MB a minute for 30 minutes from 100 MB
    windows = Windows(1800)
    series = [(float(at), 100.0 + at / 60) for at in range(0, 1801, 10)]
    # When its growth is computed / Then it is about 24 % (105.5 MB → 129.5 MB)
    assert abs(growth(series, windows) - (129.5 / 105.5 - 1)) < 0.01


def test_a_series_without_samples_in_a_window_has_no_growth_figure() -> None:
    # Given samples from the first minute only / When growth is computed / Then it is nan
    assert math.isnan(growth([(0.0, 1.0), (10.0, 1.0)], Windows(1800)))


def test_p99_is_taken_per_minute_of_publishing_and_for_the_first_and_last_edges() -> None:
    # Given latencies of 100 ms in the first minutes and 300 ms in the last ones
    samples = [(at / 10, 0.1 if at < 9000 else 0.3) for at in range(18000)]
    # When p99 is taken per minute and for the edges
    per_minute = p99_per_minute(samples)
    first, last = p99_first_last(samples, Windows(1800))
    # Then each minute has its own, and the last five minutes are three times the first
    assert len(per_minute) == 30
    assert per_minute[0] == 0.1
    assert per_minute[-1] == 0.3
    assert (first, last) == (0.1, 0.3)


def a_soak(worker_rss_end: float, latency_end: float, late_worker: bool = False) -> Soak:
    """A 30-minute soak of a supervisor and a worker process; the worker's RSS goes from
    100 MB to `worker_rss_end` in the last minute, latency to `latency_end` in the last 5."""
    samples = []
    for at in range(0, 1801, 10):
        worker = worker_rss_end if at >= 1740 else 100.0
        processes = {"worker 10": ProcessStat(30.0, 12, 3)}
        pid = 12 if late_worker and at >= 900 else 11
        processes[f"worker {pid}"] = ProcessStat(worker, 80, 40)
        processes["sandbox"] = ProcessStat(60.0 + at / 10, 20, 4)  # grows by design
        connections = {"rabbitmq": 6, "postgresql": 36, "postgresql (server)": 36}
        samples.append(Sample(float(at), processes, connections, 300.0))
    published = [(at / 100, latency_end if at >= 150_000 else 0.5) for at in range(180_000)]
    measured = Measured(
        "soak", published=180_000, answered=180_000, seconds=1800.0, samples=published
    )
    return Soak(30, 100.0, measured, samples)


def targets(soak: Soak) -> dict[str, str]:
    ours = Measured("ours", published=100, answered=100, seconds=1.0)
    text = markdown(Run(ours, ours, ours, ours, 97.0, 60.0, "make bench", soak=soak), "p.png", "")
    assert "## Steady over time" in text
    return {
        line.split(" | ")[0][2:]: line.rsplit(" | ", 1)[1]
        for line in text.splitlines()
        if line.startswith(("| soak:", "| a 30-minute soak"))
    }


def test_a_flat_soak_meets_every_target_though_the_sandbox_grows() -> None:
    # Given a soak whose worker memory, counts and latency stay flat (the sandbox growing)
    # When the report is written / Then every soak target is met
    judged = targets(a_soak(worker_rss_end=102.0, latency_end=0.52))
    assert len(judged) == 4
    assert set(judged.values()) == {"met |"}


def test_worker_memory_growth_a_restart_or_slower_latency_miss_their_targets() -> None:
    # Given a soak whose worker grew 10 %, one whose worker process was replaced, and one
    # whose p99 rose by 20 %
    grew = targets(a_soak(worker_rss_end=110.0, latency_end=0.5))
    restarted = targets(a_soak(worker_rss_end=100.0, latency_end=0.5, late_worker=True))
    slower = targets(a_soak(worker_rss_end=100.0, latency_end=0.6))
    memory = next(k for k in grew if k.startswith("soak: memory"))
    p99 = next(k for k in grew if k.startswith("soak: p99"))
    # When judged / Then each misses its target
    assert grew[memory] == "**missed** |"
    assert restarted[memory] == "**missed** |"
    assert slower[p99] == "**missed** |"
    assert grew[p99] == "met |"


def test_a_soak_offered_well_below_the_budget_does_not_count_as_one_at_the_full_budget() -> None:
    # Given a flat soak offered 80 debits/s on a budget of 100
    flat = a_soak(worker_rss_end=100.0, latency_end=0.5)
    slow = Soak(flat.minutes, 80.0, flat.measured, flat.samples)
    # When judged / Then the soak target is missed, the others still met
    judged = targets(slow)
    assert judged[next(k for k in judged if k.startswith("a 30-minute soak"))] == "**missed** |"
    assert sum(1 for v in judged.values() if v == "met |") == 3


def test_a_full_run_without_the_soak_says_how_to_run_it() -> None:
    # Given a full run made without --soak
    ours = Measured("ours", published=100, answered=100, seconds=1.0)
    # When the report is written
    text = markdown(Run(ours, ours, ours, ours, 97.0, 60.0, "make bench"), "p.png", "")
    # Then its "Steady over time" section names the command that adds it
    section = text[text.index("## Steady over time") :]
    assert "BENCH_ARGS=--soak" in section.split("\n## ")[0]


def test_the_soak_plot_is_written(tmp_path: Path) -> None:
    # Given a soak's figures / When plotted / Then a PNG is written
    plot_soak(a_soak(worker_rss_end=100.0, latency_end=0.5), tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"


def test_stage_p99s_are_split_by_the_minute_commands_were_published() -> None:
    # Given stage spans of commands published in the first and the third minute
    quick = {name: 0.01 for name, _, _ in STAGES}
    slow = {**quick, "publish → claimed": 2.0}
    spans = [(1000.0, quick), (1030.0, quick), (1130.0, slow)]

    # When they are grouped by minute
    minutes = stages_by_minute(spans)

    # Then each minute has its own p99, and a minute with no command has none
    assert len(minutes) == 3
    assert minutes[0]["publish → claimed"] == 0.01
    assert math.isnan(minutes[1]["publish → claimed"])
    assert minutes[2]["publish → claimed"] == 2.0
    assert minutes[2]["recorded → event"] == 0.01


def test_a_process_connections_are_counted_by_the_named_port_they_reach() -> None:
    # Given this process connected once to a local port named "stripe (the sandbox)"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                # When its connections are counted by port
                counted = connections([os.getpid()], {port: "stripe (the sandbox)"})
                # Then the one to that port is counted once (the accepted end reaches a
                # port with no name), and nothing else is
                assert counted == {"stripe (the sandbox)": 1}


def test_a_connection_its_server_closed_counts_until_the_process_closes_it() -> None:
    # Given this process's connection to "stripe (the sandbox)", closed by the server
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        named = {port: "stripe (the sandbox)"}
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        # When its connections are counted / Then that socket is still one it holds
        assert connections([os.getpid()], named) == {"stripe (the sandbox)": 1}
        # And once the process closes it, it is not
        client.close()
        assert connections([os.getpid()], named) == {}
