"""Liveness and readiness: what `/readyz` judges from the processes' reports and the ledger,
the HTTP endpoint itself, and the supervisor's part (a shared metrics directory, its
processes' exits)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import FakeMonotonic
from worker.adapters.ledger.database import make_engine
from worker.ops.health import (
    Cached,
    Check,
    ProbeServer,
    ProcessState,
    Report,
    judge,
    metrics_directory,
)
from worker.ops.probe_endpoints import LedgerProbe
from worker.ops.supervisor import Forker, Supervisor, child_environment
from worker.settings import load_settings

READY = ProcessState(consuming=True, stripe_key_accepted=True)
PAUSED = ProcessState(consuming=True, paused=True, stripe_key_accepted=True)
LEDGER_OK = Check(True, "the ledger answers SELECT 1")


# --- what /readyz judges -------------------------------------------------------------------


def test_ready_when_every_process_consumes_with_the_key_accepted_and_the_ledger_answers() -> None:
    # Given two processes both consuming with the key accepted, and the ledger answering
    report = judge({"11": READY, "12": READY}, ["11", "12"], 2, LEDGER_OK)
    # Then it is ready, each check saying so
    assert report.ready
    assert json.loads(report.body()) == {
        "ready": True,
        "not_ready": [],
        "checks": {
            "broker": {"ok": True, "detail": "2 of 2 worker processes consuming commands"},
            "ledger": {"ok": True, "detail": "the ledger answers SELECT 1"},
            "stripe_key": {
                "ok": True,
                "detail": "Stripe accepted the key in 2 of 2 worker processes",
            },
        },
    }


@pytest.mark.parametrize(
    ("states", "live", "not_ready", "said"),
    [
        ({"11": READY}, ["11", "12"], ["broker", "stripe_key"], "1 of 2 worker processes"),
        (
            {"11": READY, "12": PAUSED},
            ["11", "12"],
            ["broker"],
            "1 paused (commands being given back",
        ),
        ({"11": READY}, ["11"], ["broker", "stripe_key"], "1 not running (being restarted)"),
        (
            {"11": READY, "12": ProcessState(consuming=True)},
            ["11", "12"],
            ["stripe_key"],
            "Stripe has not accepted the key in 1 of 2",
        ),
    ],
    ids=["one-still-starting", "one-paused", "one-dead", "key-not-accepted"],
)
def test_not_ready_names_what_is_not(
    states: dict[str, ProcessState], live: list[str], not_ready: list[str], said: str
) -> None:
    # Given two expected processes, one of which is not fully there
    report = judge(states, live, 2, LEDGER_OK)
    body = json.loads(report.body())
    # Then it is not ready, and the body names each failing check and why
    assert (report.ready, body["not_ready"]) == (False, not_ready)
    assert any(said in body["checks"][name]["detail"] for name in not_ready)


def test_a_ledger_that_does_not_answer_makes_it_not_ready() -> None:
    down = Check(False, "the ledger does not answer SELECT 1 (OperationalError)")
    report = judge({"11": READY}, ["11"], 1, down)
    assert json.loads(report.body())["not_ready"] == ["ledger"]


def test_a_report_of_another_pid_does_not_count() -> None:
    # Given a report from a process that is not one of the live ones (an earlier run's)
    report = judge({"99": READY}, ["11"], 1, LEDGER_OK)
    # Then the live one, which reported nothing yet, is not ready
    assert not report.ready


def test_the_ledger_is_asked_at_most_every_two_seconds(tmp_path: Path) -> None:
    # Given a cached answer on a clock the test moves
    clock = FakeMonotonic()
    asked: list[float] = []

    def ask() -> int:
        asked.append(clock())
        return len(asked)

    cached = Cached(ask, 2.0, clock)
    # When probes come every half second for three seconds
    answers = []
    for _ in range(7):
        answers.append(cached.get())
        clock.sleep(0.5)
    # Then the ledger was asked at the start and once two seconds later
    assert answers == [1, 1, 1, 1, 2, 2, 2]
    assert asked == [1000.0, 1002.0]


def test_a_ledger_that_cannot_be_opened_is_named_by_its_error_class_only(tmp_path: Path) -> None:
    # Given a ledger whose database cannot be opened
    probe = LedgerProbe(make_engine(f"sqlite:///{tmp_path}/missing/dir/ledger.db"))
    # When readiness asks it
    check = probe.check()
    # Then it fails, naming the kind of error (not its text, which may name hosts)
    assert check == Check(False, "the ledger does not answer SELECT 1 (OperationalError)")


def test_a_ledger_that_answers_passes(tmp_path: Path) -> None:
    probe = LedgerProbe(make_engine(f"sqlite:///{tmp_path}/ledger.db"))
    assert probe.check() == LEDGER_OK


# --- the HTTP endpoint ---------------------------------------------------------------------


class FakeEndpoints:
    def __init__(self, report: Report) -> None:
        self.report = report

    def metrics(self) -> tuple[bytes, str]:
        return b"debit_worker_debits_in_flight 0.0\n", "text/plain; version=0.0.4"

    def readiness(self) -> Report:
        return self.report


class BrokenEndpoints(FakeEndpoints):
    def readiness(self) -> Report:
        raise RuntimeError("a bug in a check")


def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers["Content-Type"], refused.read()


@pytest.fixture
def serving() -> Iterator[list[ProbeServer]]:
    servers: list[ProbeServer] = []
    yield servers
    for server in servers:
        server.close()


def serve(servers: list[ProbeServer], endpoints: Any) -> ProbeServer:
    built: list[int] = []

    def build() -> Any:
        built.append(1)
        return endpoints

    server = ProbeServer.listen("127.0.0.1", 0, build)
    assert server is not None
    server.built = built  # type: ignore[attr-defined]
    server.serve_in_background()
    servers.append(server)
    return server


def test_livez_answers_without_loading_what_the_other_paths_need(
    serving: list[ProbeServer],
) -> None:
    # Given an endpoint whose readiness and metrics are built on first use
    server = serve(serving, FakeEndpoints(Report({})))
    # When /livez is asked
    status, content_type, body = get(server.port, "/livez")
    # Then it answers at once, and built nothing
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"live": True})
    assert server.built == []  # type: ignore[attr-defined]


def test_readyz_is_503_with_the_report_when_not_ready_and_metrics_are_served(
    serving: list[ProbeServer],
) -> None:
    # Given a worker whose ledger does not answer
    report = Report({"ledger": Check(False, "the ledger does not answer SELECT 1 (X)")})
    server = serve(serving, FakeEndpoints(report))
    # When readiness and metrics are asked
    status, _, body = get(server.port, "/readyz")
    metrics_status, content_type, exposition = get(server.port, "/metrics")
    # Then readiness is 503 with the report, and the metrics are the endpoints'
    assert (status, json.loads(body)["not_ready"]) == (503, ["ledger"])
    assert (metrics_status, content_type) == (200, "text/plain; version=0.0.4")
    assert exposition.startswith(b"debit_worker_debits_in_flight")
    assert get(server.port, "/nowhere")[0] == 404


def test_a_failing_check_answers_500_and_the_endpoint_keeps_serving(
    serving: list[ProbeServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(serving, BrokenEndpoints(Report({})))
    with caplog.at_level(logging.ERROR, logger="worker.ops.health"):
        assert get(server.port, "/readyz")[0] == 500
    assert "/readyz failed" in caplog.text
    assert get(server.port, "/livez")[0] == 200


def test_a_port_already_taken_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a port someone else listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When the endpoint is to listen there
        with caplog.at_level(logging.ERROR, logger="worker.ops.health"):
            server = ProbeServer.listen("127.0.0.1", port, lambda: FakeEndpoints(Report({})))
    # Then there is no server, and one line says why and what to do
    assert server is None
    assert "cannot listen on 127.0.0.1" in caplog.text
    assert "DEBIT_WORKER_METRICS_PORT" in caplog.text


def test_the_supervisor_answers_requests_between_its_checks() -> None:
    # Given an endpoint served on the calling thread (as the supervisor does)
    server = ProbeServer.listen("127.0.0.1", 0, lambda: FakeEndpoints(Report({})))
    assert server is not None
    answers: list[int] = []
    client = threading.Thread(target=lambda: answers.append(get(server.port, "/livez")[0]))
    try:
        # When a probe comes while it waits between two checks
        client.start()
        server.serve_for(1.0)
        client.join(timeout=5)
    finally:
        server.close()
    # Then the probe was answered within that wait
    assert answers == [200]


# --- the supervisor's part -----------------------------------------------------------------


def test_an_earlier_runs_metric_files_are_removed_from_a_given_directory(tmp_path: Path) -> None:
    # Given a directory with an earlier run's files (which would count again)
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("not ours")
    # When it is used for a new run
    with metrics_directory(str(tmp_path)) as directory:
        # Then it is empty of metric files, and kept afterwards
        assert directory == str(tmp_path)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    assert tmp_path.is_dir()


def test_without_a_directory_a_temporary_one_is_made_and_removed() -> None:
    with metrics_directory(None) as directory:
        assert Path(directory).is_dir()
    assert not Path(directory).exists()


def test_the_supervisor_reports_its_live_processes_and_each_ones_exit() -> None:
    # Given a supervisor of one process
    exited: list[int] = []
    supervisor = Supervisor(
        Forker(lambda: time.sleep(30)), 1, delay=lambda _n: 60.0, on_exit=exited.append
    )
    try:
        supervisor.start_all()
        live = supervisor.live_pids()
        slot = supervisor.slots[0]
        assert slot.process is not None
        pid = slot.process.pid
        # When its process dies and the supervisor checks
        slot.process.kill()
        slot.process.wait()
        assert supervisor.watch()
    finally:
        for each in supervisor.slots:
            if each.process is not None and each.process.poll() is None:
                each.process.kill()
                each.process.wait()
    # Then it listed the process while it ran, and reported its exit once
    assert live == [str(pid)]
    assert exited == [pid]
    assert supervisor.live_pids() == []


def test_the_supervisors_environment_carries_the_endpoints_port_and_address() -> None:
    # Given settings with an endpoint on 127.0.0.1:9999
    settings = load_settings(
        stripe_api_key="sk_test_abc", metrics_port=9999, metrics_host="127.0.0.1"
    )
    # When the supervisor's environment is made
    env = child_environment(settings, 2)
    # Then it says where to serve (the supervisor gives its processes port 0)
    assert (env["DEBIT_WORKER_METRICS_PORT"], env["DEBIT_WORKER_METRICS_HOST"]) == (
        "9999",
        "127.0.0.1",
    )
