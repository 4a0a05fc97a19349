"""The operator's CLI: failures in one line, help on every command without loading the
worker, working ledger commands (consents, status, requests) on a real SQLite ledger."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import amqp.exceptions
import click
import kombu.exceptions
import psycopg
import pytest
import sqlalchemy.exc
from click.testing import CliRunner, Result
from sqlalchemy import text

from schemas.commands import DebitReason, DebitRequested
from worker.adapters.ledger import Ledger, Status
from worker.adapters.ledger.migrate import head_revision
from worker.domain.errors import OperatorActionNeeded
from worker.domain.rule_tables import RuleFileError
from worker.ops.cli import REASONS, RootGroup, main
from worker.ops.cli_errors import BROKER, DATABASE, explain
from worker.ops.cli_requests import STATES, since_moment
from worker.ops.cli_schema import known_at_head, newest_revision
from worker.ops.consent_import import parse_rows
from worker.settings import SettingsError

from .fakes import FakeClock, migrated_ledger

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("debit-worker")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("DEBIT_WORKER_STRIPE_API_KEY", "DEBIT_WORKER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    return {"DEBIT_WORKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}


@pytest.fixture
def ledger(env: dict[str, str], tmp_path: Path) -> Ledger:
    """The migrated ledger the `env` commands use."""
    return migrated_ledger(tmp_path, FakeClock(), name="ledger")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group)
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
    return found


def _error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def _invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, args, env=env)


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _commands(main), ids=" ".join)
def test_every_command_explains_itself(path: tuple[str, ...]) -> None:
    # Given any command / When asked for its help / Then it prints its usage and succeeds
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert result.output.startswith(f"Usage: main {' '.join(path)}")
    assert len(result.output.splitlines()) > 3


def test_loading_the_cli_loads_none_of_the_worker_s_heavy_libraries() -> None:
    # Given a fresh interpreter / When the CLI (what `debit-worker --help` runs) is loaded
    probe = (
        "import sys, worker.ops.cli; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    # Then none of what a command needs when it runs is loaded for its help
    heavy = {"celery", "kombu", "amqp", "stripe", "sqlalchemy", "alembic", "pydantic", "aiohttp"}
    assert heavy.isdisjoint(loaded), heavy.intersection(loaded)
    assert "sentry_sdk" not in loaded


def test_the_installed_command_answers_help() -> None:
    # Given the installed `debit-worker` script / When asked for help
    done = subprocess.run([str(CLI), "--help"], capture_output=True, text=True, check=False)
    # Then it lists every command, the lazily loaded sandbox included
    assert done.returncode == 0, done.stderr
    for name in ("run", "status", "requests", "consent", "dlq", "reconcile", "sandbox"):
        assert re.search(rf"^  {name}\b", done.stdout, re.MULTILINE), name


def test_the_lazy_sandbox_is_listed_with_the_first_sentence_of_its_own_help() -> None:
    # Given the sandbox command, listed without loading it
    from worker.sandbox.cli import sandbox  # noqa: PLC0415 - the real one, to compare

    # Then its listed summary is how its own help begins
    assert sandbox.help is not None
    assert sandbox.help.startswith(RootGroup.lazy["sandbox"].summary)


def test_the_cli_spells_the_reasons_and_states_the_contract_and_the_ledger_define() -> None:
    assert set(REASONS) == {reason.value for reason in DebitReason}
    assert set(STATES) == {state.value for state in Status}


# --- one line per failure -------------------------------------------------------------------


def test_run_without_a_stripe_key_stops_with_a_clear_message(env: dict[str, str]) -> None:
    # Given no DEBIT_WORKER_STRIPE_API_KEY
    # When the worker is started
    result = _invoke(["run", "--no-migrate"], env)
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
@pytest.mark.parametrize("processes", ["1", "2"])
def test_run_with_a_live_key_and_an_unsafe_setting_stops_with_one_error_line(
    env: dict[str, str], setting: dict[str, str], named: str, processes: str
) -> None:
    # Given a live key, and unsigned mode or an address other than Stripe's
    live = {**env, "DEBIT_WORKER_STRIPE_API_KEY": "rk_live_51CliLiveKey", **setting}
    # When the worker is started, as one process or as a supervisor
    result = _invoke(["run", "--no-migrate", "--processes", processes], live)
    # Then it refuses with one `Error:` line naming the setting, and nothing else
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: ")
    assert named in line
    assert "rk_live_51CliLiveKey" not in line


def test_a_setting_that_is_not_json_is_named_in_one_line_without_its_value(
    env: dict[str, str],
) -> None:
    # Given producer keys cut off in the middle, a secret in them
    broken = {**env, "DEBIT_WORKER_PRODUCER_KEYS": '{"p1": {"k1": "s3cret-value"'}
    # When any command reads the settings
    result = _invoke(["status"], broken)
    # Then one line names the variable and says it is not JSON, without the secret
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: invalid configuration: DEBIT_WORKER_PRODUCER_KEYS is not")
    assert "JSON" in line
    assert "s3cret-value" not in line


def test_an_unmigrated_ledger_tells_the_operator_to_migrate(env: dict[str, str]) -> None:
    # Given an empty SQLite file as the ledger / When a ledger command runs
    result = _invoke(["consent", "list"], env)
    # Then one line says to run the migration
    assert result.exit_code == 1
    [line] = _error_lines(result)
    assert "not migrated" in line
    assert "`debit-worker migrate`" in line
    assert "Traceback" not in result.output


def test_a_failure_the_cli_does_not_know_keeps_its_traceback() -> None:
    # Given a command failing with an error no operator can fix (a bug)
    @click.group(cls=RootGroup)
    def root() -> None:
        pass

    @root.command()
    def broken() -> None:
        raise ZeroDivisionError("a bug")

    # When it runs / Then the error is not dressed up as a sentence
    result = CliRunner().invoke(root, ["broken"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_a_multi_line_click_error_is_printed_on_one_line() -> None:
    # Given a command whose error message spans lines
    @click.group(cls=RootGroup)
    def root() -> None:
        pass

    @root.command()
    def fails() -> None:
        raise click.ClickException("first part:\n  second part")

    # When it runs / Then its one `Error:` line holds both parts
    result = CliRunner().invoke(root, ["fails"])
    assert result.exit_code == 1
    assert result.output.splitlines() == ["Error: first part: second part"]


def _wrapped(outer: type[Exception], inner: BaseException) -> BaseException:
    """`outer` raised from `inner`, as kombu re-raises its transport's errors."""
    wrapper = outer(str(inner))
    wrapper.__cause__ = inner
    return wrapper


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            sqlalchemy.exc.OperationalError(
                "SELECT 1", {}, Exception('connection to server at "db" failed: Connection refused')
            ),
            "cannot reach the ledger database at db.example:5432/ledger",
        ),
        (
            sqlalchemy.exc.OperationalError(
                "SELECT 1", {}, Exception('FATAL:  database "ledger" does not exist')
            ),
            'CREATE DATABASE "ledger"',
        ),
        (
            sqlalchemy.exc.OperationalError(
                "SELECT 1", {}, Exception("FATAL:  the database system is starting up")
            ),
            "run the command again once it has started",
        ),
        (
            sqlalchemy.exc.ProgrammingError(
                "SELECT 1", {}, Exception('relation "debit_requests" does not exist')
            ),
            "run `debit-worker migrate`",
        ),
        (
            sqlalchemy.exc.OperationalError(
                "SELECT 1", {}, Exception("password authentication failed for user ops")
            ),
            "check the user and password in DEBIT_WORKER_DATABASE_URL",
        ),
        (
            _wrapped(kombu.exceptions.OperationalError, ConnectionRefusedError(111, "refused")),
            "cannot reach RabbitMQ at mq.example:5671 vhost debits",
        ),
        (
            amqp.exceptions.AccessRefused("Login was refused"),
            "check the user and password in DEBIT_WORKER_BROKER_URL",
        ),
        (
            _wrapped(
                kombu.exceptions.OperationalError, amqp.exceptions.AccessRefused("Login refused")
            ),
            "refused the login",
        ),
        (
            amqp.exceptions.NotFound("no exchange 'debits.commands' in vhost 'debits'"),
            "`debit-worker run` declares every exchange and queue",
        ),
        (
            amqp.exceptions.NotAllowed("vhost debits not found"),
            "check the vhost in DEBIT_WORKER_BROKER_URL",
        ),
        (
            OperatorActionNeeded("Stripe refused the worker's credentials (Invalid API Key)"),
            "set DEBIT_WORKER_STRIPE_API_KEY",
        ),
        (SettingsError("DEBIT_WORKER_X is not set"), "DEBIT_WORKER_X is not set"),
        (
            OSError(98, "error while attempting to bind on address ('127.0.0.1', 12111)"),
            "another process listens there; stop it, or choose another port (--port)",
        ),
        (
            RuleFileError("rules.yaml: not valid YAML: mapping values are not allowed"),
            "rules.yaml: not valid YAML: mapping values are not allowed: fix the file "
            "DEBIT_WORKER_RULES_FILE names",
        ),
    ],
    ids=[
        "db-down",
        "db-missing",
        "db-starting",
        "db-unmigrated",
        "db-password",
        "broker-down",
        "broker-password",
        "broker-password-wrapped",
        "no-exchange",
        "no-vhost",
        "stripe-key",
        "settings",
        "port-taken",
        "rules-file",
    ],
)
def test_each_known_failure_is_one_sentence_that_says_what_to_do(
    error: BaseException, says: str
) -> None:
    # Given where the command connects, with credentials in both URLs
    meta = {
        DATABASE: "postgresql+psycopg://ops:db-pass@db.example:5432/ledger",
        BROKER: "amqps://ops:mq-pass@mq.example:5671/debits",
    }
    # When the failure is explained
    sentence = explain(error, meta)
    # Then it is one line that says what to do, and names no password
    assert sentence is not None
    assert says in sentence
    assert "\n" not in sentence
    assert "db-pass" not in sentence
    assert "mq-pass" not in sentence


def test_credentials_in_a_driver_message_are_left_out() -> None:
    error = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("could not connect to postgresql://ops:hunter2@db/x")
    )
    sentence = explain(error, {})
    assert sentence is not None
    assert "hunter2" not in sentence


def test_an_oserror_outside_the_broker_client_is_not_called_a_broker_failure() -> None:
    assert explain(ConnectionRefusedError(111, "refused"), {}) is None


def test_a_statement_the_database_refuses_for_another_reason_is_a_bug_with_its_traceback() -> None:
    error = sqlalchemy.exc.ProgrammingError(
        "SELEC 1", {}, Exception('syntax error at or near "SELEC"')
    )
    assert explain(error, {}) is None


def test_the_database_unreachable_through_psycopg_itself_is_explained_too() -> None:
    error = psycopg.OperationalError("connection failed: Connection refused")
    sentence = explain(error, {DATABASE: "postgresql+psycopg://db.example/ledger"})
    assert sentence is not None
    assert sentence.startswith("cannot reach the ledger database at db.example/ledger")


# --- request --------------------------------------------------------------------------------


def test_request_refuses_an_invalid_command_before_publishing(env: dict[str, str]) -> None:
    # Given a negative amount / When requested / Then the field is named and nothing is sent
    result = _invoke(
        ["request", "--account", "acct_1A", "--amount", "-5", "--currency", "usd"],
        {**env, "DEBIT_WORKER_BROKER_URL": "amqp://nobody@127.0.0.1:1//"},
    )
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: not a valid command: amount:")


@pytest.mark.parametrize(
    ("metadata", "named"),
    [("order42", "is not KEY=VALUE"), ("=42", "has an empty KEY"), (" =42", "has an empty KEY")],
)
def test_malformed_metadata_is_an_error_not_silently_dropped(
    env: dict[str, str], metadata: str, named: str
) -> None:
    # Given metadata without `=`, or with an empty key
    args = ["request", "--account", "acct_1A", "--amount", "5", "--currency", "usd"]
    # When requested
    result = _invoke([*args, "--metadata", "order=7", "--metadata", metadata], env)
    # Then the option is refused, naming the item, before anything is sent
    assert result.exit_code == 2
    [line] = _error_lines(result)
    assert "--metadata" in line
    assert named in line


def test_metadata_given_twice_is_an_error(env: dict[str, str]) -> None:
    args = ["request", "--account", "acct_1A", "--amount", "5", "--currency", "usd"]
    result = _invoke([*args, "--metadata", "k=1", "--metadata", "k=2"], env)
    assert result.exit_code == 2
    assert "'k' is given twice" in result.output


# --- consents -------------------------------------------------------------------------------


def test_consents_are_granted_listed_and_revoked_in_the_ledger(
    env: dict[str, str], ledger: Ledger
) -> None:
    # Given a migrated ledger
    # When consent is granted, then revoked
    granted = _invoke(["consent", "grant", "acct_1A", "--agreement", "doc-7", "--by", "ops"], env)
    listed = _invoke(["consent", "list"], env)
    revoked = _invoke(["consent", "revoke", "acct_1A", "--by", "ops"], env)
    after = _invoke(["consent", "list", "--account", "acct_1A"], env)
    # Then each step is reported and the list shows the state
    assert "consent recorded for acct_1A (agreement doc-7) by ops" in granted.output
    assert "active" in listed.output
    assert "doc-7" in listed.output
    assert "revoked 1 active consent(s)" in revoked.output
    assert "revoked" in after.output
    assert "by ops" in after.output


def test_granting_the_same_consent_twice_records_it_once(
    env: dict[str, str], ledger: Ledger
) -> None:
    # Given a consent granted
    grant = ["consent", "grant", "acct_1A", "--agreement", "doc-7", "--by", "ops"]
    _invoke(grant, env)
    # When it is granted again
    again = _invoke(grant, env)
    # Then the second grant says so and writes no second row or audit entry
    assert again.exit_code == 0
    assert "already has an active consent under doc-7: nothing recorded" in again.output
    assert len(ledger.consents.list("acct_1A")) == 1
    assert [entry.action for entry in ledger.history("consent", "acct_1A")] == ["granted"]


def test_a_grant_for_something_that_is_not_an_account_id_is_refused(
    env: dict[str, str], ledger: Ledger
) -> None:
    result = _invoke(["consent", "grant", "acc_1A", "--agreement", "doc-7"], env)
    assert result.exit_code == 2
    assert "'acc_1A' is not an account id" in result.output
    assert ledger.consents.list() == []


def test_revoking_an_account_without_consent_fails_in_one_line(
    env: dict[str, str], ledger: Ledger
) -> None:
    # Given an account that never consented / When its consent is revoked
    result = _invoke(["consent", "revoke", "acct_1Nobody", "--by", "ops"], env)
    # Then it fails, saying nothing was revoked, and no audit entry is written
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: acct_1Nobody has no active consent: nothing revoked")
    assert ledger.history("consent", "acct_1Nobody") == []


def test_parsing_a_consent_file_checks_every_line_and_numbers_the_bad_ones() -> None:
    # Given a header, good lines, a blank line and bad lines
    rows = [
        (["account", "agreement", "granted_by"], 1),
        (["acct_1A", "doc-1", ""], 2),
        (["", ""], 3),
        (["acct_1B", "doc-2", "alice"], 4),
        (["acc_1C", "doc-3"], 5),
        (["acct_1D", "  "], 6),
        (["acct_1E"], 7),
        (["acct_1F!", "doc-4"], 8),
    ]
    # When parsed, with `ops` granting lines that name no one
    found = parse_rows(rows, "ops")
    # Then the good lines are grants and each bad line is named by its number
    assert [(g.account, g.agreement_ref, g.actor) for g in found.grants] == [
        ("acct_1A", "doc-1", "ops"),
        ("acct_1B", "doc-2", "alice"),
    ]
    assert [problem.split(":")[0] for problem in found.problems] == [
        "line 5",
        "line 6",
        "line 7",
        "line 8",
    ]
    assert "'acc_1C' is not an account id" in found.problems[0]


def test_a_header_with_other_columns_is_a_problem() -> None:
    found = parse_rows([(["account", "agreement_url"], 1)], "ops")
    assert found.problems == ["line 1: the header must be account,agreement[,granted_by]"]


def test_a_consent_file_with_a_bad_line_grants_nothing(
    env: dict[str, str], ledger: Ledger, tmp_path: Path
) -> None:
    # Given a file with two good lines and one bad one
    csv = tmp_path / "consents.csv"
    csv.write_text("account,agreement\nacct_1A,doc-1\nnot-an-account,doc-2\nacct_1B,doc-3\n")
    # When it is imported
    result = _invoke(["consent", "import", str(csv)], env)
    # Then the bad line is shown by number, the command fails, and nobody is granted
    assert result.exit_code == 1
    assert "line 3: 'not-an-account' is not an account id" in result.output
    [line] = _error_lines(result)
    assert "1 bad line(s)" in line
    assert "nothing granted" in line
    assert ledger.consents.list() == []


def test_importing_a_consent_file_twice_grants_each_consent_once(
    env: dict[str, str], ledger: Ledger, tmp_path: Path
) -> None:
    # Given an account already consenting, and a file naming it and two others (one twice)
    ledger.consents.grant("acct_1A", "doc-1", "earlier")
    csv = tmp_path / "consents.csv"
    csv.write_text("\ufeffacct_1A,doc-1\nacct_1B,doc-2,alice\nacct_1C,doc-3\nacct_1C,doc-3\n")
    # When it is imported twice
    first = _invoke(["consent", "import", str(csv), "--by", "ops"], env)
    second = _invoke(["consent", "import", str(csv), "--by", "ops"], env)
    # Then the first grants the two new consents, the second none, and each run says so
    assert "granted 2, already had 2 (4 consent line(s)" in first.output, first.output
    assert "granted 0, already had 4" in second.output, second.output
    consents = {(c.account_id, c.granted_by) for c in ledger.consents.list()}
    assert consents == {("acct_1A", "earlier"), ("acct_1B", "alice"), ("acct_1C", "ops")}
    [entry] = ledger.history("consent", "acct_1B")
    assert entry.detail == {"agreement_ref": "doc-2", "source": "import consents.csv"}


def test_a_consent_file_that_is_not_utf8_is_refused_in_one_line(
    env: dict[str, str], ledger: Ledger, tmp_path: Path
) -> None:
    csv = tmp_path / "consents.csv"
    csv.write_bytes(b"acct_1A,caf\xe9\n")
    result = _invoke(["consent", "import", str(csv)], env)
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert "is not UTF-8 text" in line
    assert "nothing granted" in line


# --- status and requests --------------------------------------------------------------------


def _claim(ledger: Ledger, request_id: str, account: str, producer: str | None) -> None:
    command = DebitRequested.model_validate(
        {
            "request_id": request_id,
            "account": account,
            "amount": 2500,
            "currency": "usd",
            "reason": "platform_charge",
        }
    )
    ledger.requests.claim(command, "w1", 60.0, producer=producer)


def test_status_of_an_unknown_request_says_so(env: dict[str, str], ledger: Ledger) -> None:
    result = _invoke(["status", "nope-1"], env)
    assert result.exit_code == 1
    assert "no request nope-1 in the ledger" in result.output


def test_status_of_several_requests_as_json_shows_the_known_and_fails_on_the_unknown(
    env: dict[str, str], ledger: Ledger
) -> None:
    # Given two requests in the ledger
    _claim(ledger, "req-a", "acct_1A", "shop")
    _claim(ledger, "req-b", "acct_1B", None)
    # When both and an unknown one are asked for as JSON
    result = CliRunner().invoke(main, ["status", "req-a", "nope", "req-b", "--json"], env=env)
    # Then the JSON array holds both, with their history, and the command fails on the third
    assert result.exit_code == 1
    shown = json.loads(result.stdout)
    assert [(item["request_id"], item["status"]) for item in shown] == [
        ("req-a", "received"),
        ("req-b", "received"),
    ]
    assert shown[0]["producer"] == "shop"
    assert shown[0]["history"][0]["action"] == "received"
    assert "Error: no request nope in the ledger" in result.stderr


def test_the_status_overview_as_json_counts_by_status(env: dict[str, str], ledger: Ledger) -> None:
    _claim(ledger, "req-a", "acct_1A", "shop")
    result = _invoke(["status", "--json"], env)
    assert result.exit_code == 0
    assert json.loads(result.output) == {"counts": {"received": 1}, "needs_reconciliation": []}


def test_requests_are_listed_newest_first_by_every_filter(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given requests of two accounts and two producers, a minute apart
    clock = FakeClock()
    ledger = migrated_ledger(tmp_path, clock, name="ledger")
    for request_id, account, producer in [
        ("r1", "acct_1A", "shop"),
        ("r2", "acct_1B", "shop"),
        ("r3", "acct_1A", "billing"),
    ]:
        _claim(ledger, request_id, account, producer)
        clock.advance(60)
    first = clock.now - timedelta(seconds=180)

    def ids(*options: str) -> list[str]:
        result = _invoke(["requests", "list", "--json", *options], env)
        assert result.exit_code == 0, result.output
        return [item["request_id"] for item in json.loads(result.output)]

    # When listed with each filter / Then newest first, only the matching ones
    assert ids() == ["r3", "r2", "r1"]
    assert ids("--account", "acct_1A") == ["r3", "r1"]
    assert ids("--producer", "shop") == ["r2", "r1"]
    assert ids("--state", "received", "--state", "failed") == ["r3", "r2", "r1"]
    assert ids("--state", "succeeded") == []
    assert ids("--since", (first + timedelta(seconds=30)).isoformat()) == ["r3", "r2"]
    assert ids("--limit", "1") == ["r3"]


def test_requests_list_in_text_says_how_many(env: dict[str, str], ledger: Ledger) -> None:
    _claim(ledger, "req-a", "acct_1A", "shop")
    result = _invoke(["requests", "list", "--limit", "1"], env)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "req-a  received  2500 usd  acct_1A  producer=shop  attempts=0" in lines[0]
    assert lines[-1] == "1 request(s) (--limit reached)"


def test_since_takes_an_age_or_an_iso_time() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert since_moment("90s", now) == now - timedelta(seconds=90)
    assert since_moment("2h", now) == now - timedelta(hours=2)
    assert since_moment("7d", now) == now - timedelta(days=7)
    assert since_moment("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert since_moment("2026-12-01T09:30:00+01:00", now) == datetime(
        2026, 12, 1, 8, 30, tzinfo=UTC
    )
    with pytest.raises(click.BadParameter, match="neither an age"):
        since_moment("yesterday", now)


# --- the worker waits for its broker --------------------------------------------------------


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
    # When the worker starts
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(CLI), "run"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
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


# --- the manual -----------------------------------------------------------------------------


def _reference_rows(path: tuple[str, ...]) -> list[str]:
    """The rows of the manual's command-line table that describe `debit-worker PATH`."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("## The command line")
    end = text.index("\n## ", start + 1)
    named = f"| `debit-worker {' '.join(path)}"
    return [
        line
        for line in text[start:end].splitlines()
        if line.startswith(named) and line[len(named)] in " `"
    ]


@pytest.mark.parametrize("path", _commands(main), ids=" ".join)
def test_the_manual_names_every_command_and_each_of_its_options(path: tuple[str, ...]) -> None:
    # Given the manual's command-line table and a command's real options
    rows = _reference_rows(path)
    ctx = click.Context(main)
    command: click.Command | None = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, name)
    assert command is not None
    options = [
        opt
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    ]
    # Then the table has a row for the command, which names every option of it
    assert rows, f"no row for debit-worker {' '.join(path)}"
    if path[0] == "sandbox":
        return  # its options are in docs/sandbox.md
    missing = [opt for opt in options if not any(f"`{opt}" in row for row in rows)]
    assert missing == [], f"debit-worker {' '.join(path)}: {missing}"


# --- the supervisor's start: migrate only what needs it ----------------------------------


def test_the_newest_revision_read_from_the_files_is_alembics_head() -> None:
    assert newest_revision() == head_revision()


def test_two_heads_read_from_the_files_leave_the_decision_to_alembic(tmp_path: Path) -> None:
    for name, down in (("a", "None"), ("b", '"a"'), ("c", '"a"')):
        (tmp_path / f"{name}.py").write_text(f'revision = "{name}"\ndown_revision = {down}\n')
    assert newest_revision(tmp_path) is None


def test_only_a_ledger_recorded_at_the_newest_revision_is_known_at_head(
    ledger: Ledger, env: dict[str, str], tmp_path: Path
) -> None:
    # Given a migrated ledger, a missing file, and an unreachable server
    url = env["DEBIT_WORKER_DATABASE_URL"]
    # Then only the migrated ledger is known to be at the head
    assert known_at_head(url)
    assert not known_at_head(f"sqlite:///{tmp_path / 'missing.db'}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not known_at_head(f"postgresql+psycopg://u@127.0.0.1:{port}/x")
    # When the ledger records an older revision / Then it is not
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0005_reconciliation'"))
    assert not known_at_head(url)
