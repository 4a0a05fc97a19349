"""`debit-worker dlq` on the embedded broker and a SQLite ledger: it first moves what waits in
the dead-letter queue into the ledger, then lists, replays and discards the ledger's rows."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kombu import Connection, Queue

from worker.adapters.ledger import Ledger
from worker.adapters.ledger.dead_letters import STATES, DeadLetterStore
from worker.celery_app import create_app
from worker.ops import cli_dlq
from worker.ops.cli import main
from worker.settings import load_settings
from worker.transport.publisher import DeadLetters
from worker.transport.topology import EMBEDDED_BROKER_URL, command_exchange, dead_letter_queue

from .fakes import FakeClock, migrated_ledger

OPERATOR = {
    "DEBIT_WORKER_PRODUCER_ID": "ops",
    "DEBIT_WORKER_PRODUCER_KEY_ID": "o1",
    "DEBIT_WORKER_PRODUCER_SECRET": "ops-secret",
}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("DEBIT_WORKER_DATABASE_URL", "DEBIT_WORKER_BROKER_URL", "USER", "LOGNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    return {
        "DEBIT_WORKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "DEBIT_WORKER_BROKER_URL": EMBEDDED_BROKER_URL,
        "USER": "alice",
    }


@pytest.fixture
def ledger(env: dict[str, str], tmp_path: Path) -> Ledger:
    return migrated_ledger(tmp_path, FakeClock(), name="ledger")


@pytest.fixture
def broker() -> Iterator[Any]:
    """The embedded broker (one per process), its dead-letter queue emptied."""
    with Connection(EMBEDDED_BROKER_URL) as connection:
        channel: Any = connection.default_channel
        dead_letter_queue(channel).declare()
        channel.queue_purge(dead_letter_queue.name)
        yield channel


def dead_letter(env: dict[str, str], body: bytes, request_id: str | None = None) -> None:
    """Published as the worker publishes one, at the intake or (with a request) the task."""
    settings = load_settings(broker_url=env["DEBIT_WORKER_BROKER_URL"])
    DeadLetters(create_app(settings)).send(
        body,
        reason="body is not JSON" if request_id is None else "attempts exhausted: Boom",
        stage="intake" if request_id is None else "task",
        headers={"x-debit-worker-request-id": request_id} if request_id else None,
    )


def dlq(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["dlq", *args], env=env)


def command(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "account": "acct_1", "amount": 100}).encode()


def test_the_cli_spells_the_states_the_ledger_defines() -> None:
    assert cli_dlq.STATES == STATES


def test_listing_moves_the_queue_into_the_ledger_and_twice_shows_the_same(
    env: dict[str, str], ledger: Ledger, broker: Any
) -> None:
    # Given two dead letters in the queue, one with a request
    dead_letter(env, b"\x00\xffnot json")
    dead_letter(env, command("r-1"), request_id="r-1")
    # When an operator lists them twice
    first, second = dlq(env, "list"), dlq(env, "list")
    # Then both listings show both, with their request and stage, oldest first
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    lines = first.output.splitlines()
    assert lines[0].split() == [
        "id",
        "time",
        "(UTC)",
        "request",
        "id",
        "producer",
        "stage",
        "reason",
    ]
    assert lines[1].split()[2:] == ["-", "-", "intake", "body", "is", "not", "JSON"]
    assert lines[2].split()[2:4] == ["r-1", "-"]
    assert lines[-1] == "2 message(s) shown"
    # And the queue is empty: they are rows in the ledger, still pending
    assert broker.basic_get(dead_letter_queue.name, no_ack=True) is None
    kept = DeadLetterStore(ledger.engine, FakeClock()).listed()
    assert [letter.state for letter in kept] == ["pending", "pending"]


def test_the_json_listing_parses_and_carries_body_and_headers(
    env: dict[str, str], ledger: Ledger, broker: Any
) -> None:
    # Given a dead letter whose body is not UTF-8, and one that is
    dead_letter(env, b"\x00\xff")
    dead_letter(env, command("r-2"), request_id="r-2")
    # When listed as JSON
    result = dlq(env, "list", "--json")
    # Then it is one array; a body that is not UTF-8 comes in base64
    assert result.exit_code == 0, result.output
    binary, text = json.loads(result.output)
    assert (binary["body"], binary["body_encoding"]) == (
        base64.b64encode(b"\x00\xff").decode(),
        "base64",
    )
    assert (text["body"], text["body_encoding"]) == (command("r-2").decode(), "utf-8")
    assert (text["request_id"], text["stage"], text["state"]) == ("r-2", "task", "pending")
    assert text["headers"]["x-debit-worker-stage"] == "task"
    assert len(text["headers"]["x-debit-worker-dead-letter-id"]) == 32
    assert text["dead_lettered_at"].endswith("+00:00")


def test_a_discard_is_audited_and_the_discarded_letter_is_never_replayed(
    env: dict[str, str], ledger: Ledger, broker: Any
) -> None:
    # Given a dead letter of request r-3
    dead_letter(env, command("r-3"), request_id="r-3")
    # When an operator discards it with a reason
    done = dlq(env, "discard", "--request-id", "r-3", "--reason", "charged by hand")
    # Then it says what it discarded, and the audit trail has who and why
    assert done.exit_code == 0, done.output
    assert "discarded 1 dead letter(s) by operator:alice: charged by hand" in done.output
    [letter] = DeadLetterStore(ledger.engine, FakeClock()).listed(state="discarded")
    [entry] = ledger.history("dead_letter", str(letter.id))
    assert (entry.action, entry.actor) == ("dead_letter_discarded", "operator:alice")
    assert entry.detail == {"reason": "charged by hand", "request_id": "r-3"}
    # And a replay of it is refused in one line, replaying nothing
    replay = dlq({**env, **OPERATOR}, "replay", "--request-id", "r-3")
    assert replay.exit_code == 1
    assert "Error: no pending dead letter for request r-3; nothing replayed" in replay.output
    assert "0 message(s) shown" in dlq(env, "list").output


def test_discard_needs_exactly_one_of_id_and_request_and_something_pending(
    env: dict[str, str], ledger: Ledger, broker: Any
) -> None:
    both = dlq(env, "discard", "--id", "1", "--request-id", "r", "--reason", "x")
    assert both.exit_code == 2
    assert "give exactly one of --request-id and --id" in both.output
    nothing = dlq(env, "discard", "--id", "99", "--reason", "x")
    assert nothing.exit_code == 1
    assert "Error: no pending dead letter for id 99" in nothing.output


def test_a_replay_by_request_id_publishes_that_command_only_and_marks_it_replayed(
    env: dict[str, str], ledger: Ledger, broker: Any
) -> None:
    # Given two dead-lettered commands, and a queue bound where commands are published
    replays = Queue("test.replays", command_exchange, routing_key="#")
    replays(broker).declare()
    broker.queue_purge("test.replays")
    dead_letter(env, command("r-4"))
    dead_letter(env, command("r-5"))
    # When the operator replays r-5 by its request id
    result = dlq({**env, **OPERATOR}, "replay", "--request-id", "r-5")
    # Then r-5 alone is published again, vouched for by the operator, and marked replayed
    assert result.exit_code == 0, result.output
    assert "replayed 1 message(s)" in result.output
    published = broker.basic_get("test.replays", no_ack=True)
    assert published.body == command("r-5")
    assert published.headers["x-debit-replay-by"] == "ops"
    assert broker.basic_get("test.replays", no_ack=True) is None
    store = DeadLetterStore(ledger.engine, FakeClock())
    assert [letter.request_id for letter in store.listed()] == ["r-4"]
    [replayed] = store.listed(state="replayed")
    assert (replayed.request_id, replayed.resolved_by) == ("r-5", "operator:alice")


def test_dlq_commands_on_an_unmigrated_ledger_say_to_migrate(
    env: dict[str, str], broker: Any
) -> None:
    # Given a ledger file nobody migrated / When an operator lists dead letters
    result = dlq(env, "list")
    # Then one line says what to do
    assert result.exit_code == 1
    assert "is not migrated" in result.output
    assert "Traceback" not in result.output
