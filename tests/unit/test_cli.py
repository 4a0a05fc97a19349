"""The operator's CLI: clear errors, working ledger commands, help on every command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from worker.ops.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("DEBIT_WORKER_STRIPE_API_KEY", "DEBIT_WORKER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    return {"DEBIT_WORKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"}


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
    return found


@pytest.mark.parametrize("path", _commands(main), ids=" ".join)
def test_every_command_explains_itself(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert len(result.output.splitlines()) > 3


def test_run_without_a_stripe_key_stops_with_a_clear_message(env: dict[str, str]) -> None:
    # Given no DEBIT_WORKER_STRIPE_API_KEY
    # When the worker is started
    result = CliRunner().invoke(main, ["run", "--no-migrate"], env=env)
    # Then it refuses, naming the setting to set
    assert result.exit_code != 0
    assert "DEBIT_WORKER_STRIPE_API_KEY is not set" in result.output


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"DEBIT_WORKER_REQUIRE_SIGNATURES": "false"}, "DEBIT_WORKER_ALLOW_UNSIGNED_LIVE_MODE"),
        ({"DEBIT_WORKER_STRIPE_API_BASE": "http://sandbox:12111"}, "STRIPE_API_BASE"),
    ],
    ids=["unsigned", "api-base"],
)
def test_run_with_a_live_key_and_an_unsafe_setting_stops_with_one_error_line(
    env: dict[str, str], setting: dict[str, str], named: str
) -> None:
    # Given a live key, and unsigned mode or an address other than Stripe's
    live = {**env, "DEBIT_WORKER_STRIPE_API_KEY": "rk_live_51CliLiveKey", **setting}
    # When the worker is started
    result = CliRunner().invoke(main, ["run", "--no-migrate"], env=live)
    # Then it refuses with one `Error:` line naming the setting, and nothing else
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: ")
    assert named in line
    assert "rk_live_51CliLiveKey" not in line


def test_consents_are_granted_listed_and_revoked_in_the_ledger(env: dict[str, str]) -> None:
    runner = CliRunner()
    # Given a migrated ledger
    assert runner.invoke(main, ["migrate"], env=env).exit_code == 0
    # When consent is granted, then revoked
    granted = runner.invoke(
        main, ["consent", "grant", "acct_1A", "--agreement", "doc-7", "--by", "ops"], env=env
    )
    listed = runner.invoke(main, ["consent", "list"], env=env)
    revoked = runner.invoke(main, ["consent", "revoke", "acct_1A", "--by", "ops"], env=env)
    after = runner.invoke(main, ["consent", "list", "--account", "acct_1A"], env=env)
    # Then each step is reported and the list shows the state
    assert "consent recorded for acct_1A" in granted.output
    assert "active" in listed.output
    assert "doc-7" in listed.output
    assert "revoked 1 active consent(s)" in revoked.output
    assert "revoked" in after.output
    assert "by ops" in after.output


def test_status_of_an_unknown_request_says_so(env: dict[str, str]) -> None:
    runner = CliRunner()
    runner.invoke(main, ["migrate"], env=env)
    result = runner.invoke(main, ["status", "nope-1"], env=env)
    assert result.exit_code != 0
    assert "no request nope-1 in the ledger" in result.output


def test_request_refuses_an_invalid_command_before_publishing(env: dict[str, str]) -> None:
    # Given a negative amount / When requested / Then the field is named and nothing is sent
    result = CliRunner().invoke(
        main,
        ["request", "--account", "acct_1A", "--amount", "-5", "--currency", "usd"],
        env={**env, "DEBIT_WORKER_BROKER_URL": "amqp://nobody@127.0.0.1:1//"},
    )
    assert result.exit_code != 0
    assert "amount" in result.output


def test_run_waits_for_an_unreachable_broker_instead_of_exiting(tmp_path: Path) -> None:
    # Given a broker address where nothing listens (a broker being restarted, say)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DEBIT_WORKER_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{port}//",
        "DEBIT_WORKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "DEBIT_WORKER_STRIPE_API_KEY": "sk_test_unreachable_broker",
        "DEBIT_WORKER_RATE_BUDGET_REDIS_URL": "",
    }
    log = tmp_path / "run.log"
    cli = Path(sys.executable).with_name("debit-worker")
    # When the worker starts
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(cli), "run"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:
        deadline = time.monotonic() + 30
        while "broker unreachable" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        # Then it keeps running and says why it waits, rather than dying with a traceback
        assert "broker unreachable" in log.read_text()
        time.sleep(1.5)
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
