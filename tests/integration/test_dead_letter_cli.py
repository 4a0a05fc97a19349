"""Operators list, replay and discard dead letters with the CLI. Dead letters are moved from the
queue debits.dead-letter into the ledger (by every worker's keeper, and by each `dlq`
command), so listing them never touches the queue. A replay is judged by the command's own
producer signature and policy, never by the operator's key."""

from __future__ import annotations

import json
import time
import uuid

import amqp
import pytest
from click.testing import CliRunner, Result

from schemas.commands import DebitRequested
from tests.integration.conftest import (
    DEFAULT_KEY,
    OPERATOR_KEY,
    PRODUCER_KEYS,
    Key,
    PlainAmqp,
    new_id,
    payments_for,
    sign,
)
from worker.adapters.ledger import Ledger, utc_now
from worker.adapters.ledger.dead_letters import DeadLetter, DeadLetterStore
from worker.ops.cli import main
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox
from worker.settings import Settings
from worker.transport.attempts import PROCESS_TASK

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"
RECEIVED_AT = "x-debit-worker-received-at"
SUCCEEDED = "io.debit-worker.debit.succeeded.v1"


def _dead_letter(client: PlainAmqp, body: bytes, headers: dict[str, object]) -> None:
    client.channel.basic_publish(
        amqp.Message(body, application_headers=headers, delivery_mode=2),
        exchange="debits.dlx",
        routing_key="debit.requested",
    )


def _dlq(settings: Settings, *args: str, key: Key | None = None, by: str = "alice") -> Result:
    """`debit-worker dlq ARGS` against the session's broker and ledger."""
    env = {
        "DEBIT_WORKER_BROKER_URL": settings.broker_url,
        "DEBIT_WORKER_DATABASE_URL": settings.database_url,
    }
    if key is not None:
        env |= {
            "DEBIT_WORKER_PRODUCER_ID": key.producer,
            "DEBIT_WORKER_PRODUCER_KEY_ID": key.key_id,
            "DEBIT_WORKER_PRODUCER_SECRET": key.secret,
        }
    extra = ["--by", by] if args[0] in {"replay", "discard"} else []
    return CliRunner().invoke(main, ["dlq", *args, *extra], env=env)


def _replay(settings: Settings, request_id: str, key: Key = OPERATOR_KEY) -> Result:
    return _dlq(settings, "replay", "--request-id", request_id, key=key)


def _kept(
    ledger: Ledger, request_id: str, count: int = 1, timeout: float = 30.0
) -> list[DeadLetter]:
    """The request's dead letters in the ledger, once `count` are there: the session
    worker's keeper moves them within its 5 s, and a `dlq` command run while it holds one
    would not see that one yet."""
    store = DeadLetterStore(ledger.engine, utc_now)
    deadline = time.monotonic() + timeout
    while True:
        found = store.listed(state=None, request_id=request_id)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _signed_command(
    request_id: str, amount: int, *, age: int = 0
) -> tuple[bytes, dict[str, object]]:
    body = json.dumps(command_body(request_id, US, amount)).encode()
    at = int(time.time()) - age
    headers: dict[str, object] = {**sign(body, DEFAULT_KEY, at), RECEIVED_AT: f"{at}.500"}
    return body, headers


def _queued_dead_letters(client: PlainAmqp) -> int:
    return int(client.channel.queue_declare("debits.dead-letter", passive=True).message_count)


def test_a_task_message_dead_lettered_by_rabbitmq_is_replayed_under_its_producers_signature(
    broker: PlainAmqp, ledger: Ledger, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given the task message of a command signed and received an hour ago (far past the
    # signature window), dead-lettered by the broker's delivery limit with its headers
    request_id = new_id("dlq")
    command = json.dumps(command_body(request_id, US, 321))
    an_hour_ago = int(time.time()) - 3600
    headers = sign(command.encode(), DEFAULT_KEY, an_hour_ago) | {
        RECEIVED_AT: f"{an_hour_ago + 1}.250"
    }
    task_body = json.dumps([[command, headers], {}, {"callbacks": None}]).encode()
    _dead_letter(broker, task_body, {"task": PROCESS_TASK, "id": f"{request_id}:x"})
    assert _kept(ledger, request_id)
    # When an operator lists it, then replays it
    listed = _dlq(settings, "list", "--request-id", request_id)
    replayed = _replay(settings, request_id)
    # Then the listing shows it with its producer, and the replayed command is processed
    # like any other
    assert "1 message(s) shown" in listed.output, listed.output
    [row] = [line for line in listed.output.splitlines() if request_id in line]
    assert DEFAULT_KEY.producer in row.split()
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["type"] == SUCCEEDED
    assert event["data"]["amount"] == 321
    assert len(payments_for(sandbox, request_id)) == 1
    # And the dead letter is marked replayed, by the operator, in the audit trail
    [letter] = _kept(ledger, request_id)
    assert (letter.state, letter.resolved_by) == ("replayed", "operator:alice")
    assert [e.action for e in ledger.history("dead_letter", str(letter.id))] == [
        "dead_letter_replayed"
    ]


def test_a_later_attempt_dead_lettered_by_rabbitmq_is_replayed_by_its_request_id(
    broker: PlainAmqp, ledger: Ledger, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given a claimed request whose later attempt (a task naming the request only) was
    # dead-lettered by the broker's delivery limit
    request_id = new_id("dlq-task")
    body = json.dumps(command_body(request_id, US, 432)).encode()
    command = DebitRequested.model_validate_json(body)
    ledger.requests.claim(command, "dead-worker", 0.0, producer=DEFAULT_KEY.producer)
    task_body = json.dumps([[request_id], {}, {"callbacks": None}]).encode()
    _dead_letter(broker, task_body, {"task": PROCESS_TASK, "id": f"{request_id}:x"})
    # (kept with the producer the ledger recorded for the request)
    [letter] = _kept(ledger, request_id)
    assert (letter.producer, letter.stage) == (DEFAULT_KEY.producer, "broker")
    # When an operator replays it
    replayed = _replay(settings, request_id)
    # Then the request is resumed from the ledger and its debit made once
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["type"] == SUCCEEDED
    assert len(payments_for(sandbox, request_id)) == 1


def test_an_unsigned_command_dead_lettered_as_exhausted_cannot_be_laundered_by_a_replay(
    broker: PlainAmqp, ledger: Ledger, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given an unsigned command in the dead-letter queue, as a refusal that could not be
    # recorded once landed there
    request_id = new_id("launder")
    command = json.dumps(command_body(request_id, US, 777)).encode()
    _dead_letter(broker, command, {"x-debit-worker-reason": "attempts exhausted: …"})
    assert _kept(ledger, request_id)
    # When an operator replays it with the operators' key
    replayed = _replay(settings, request_id)
    # Then the worker refuses it as unauthorized, and no money moves
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["data"]["code"] == "unauthorized"
    assert "never signed" in event["data"]["message"]
    assert payments_for(sandbox, request_id) == []


def test_a_replay_vouched_for_by_a_producer_without_may_replay_is_refused(
    broker: PlainAmqp, ledger: Ledger, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given a validly signed command from an hour ago in the dead-letter queue
    request_id = new_id("noreplay")
    command = json.dumps(command_body(request_id, US, 555)).encode()
    an_hour_ago = int(time.time()) - 3600
    _dead_letter(
        broker, command, sign(command, DEFAULT_KEY, an_hour_ago) | {RECEIVED_AT: an_hour_ago}
    )
    assert _kept(ledger, request_id)
    # When someone replays it with a producer key that may not vouch for replays
    nobody = Key("noreplay", "n1", PRODUCER_KEYS["noreplay"]["n1"])
    replayed = _replay(settings, request_id, nobody)
    # Then the worker refuses it, and no money moves
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["data"]["code"] == "unauthorized"
    assert "may not replay" in event["data"]["message"]
    assert payments_for(sandbox, request_id) == []


def test_replay_without_an_operator_key_says_what_to_set_and_leaves_the_dead_letters_alone(
    settings: Settings,
) -> None:
    # Given no operator key is configured / When an operator replays
    result = _dlq(settings, "replay")
    # Then one sentence says which settings to set, and it exits non-zero
    assert result.exit_code != 0
    assert "DEBIT_WORKER_PRODUCER_ID" in result.output
    assert "may_replay" in result.output
    assert "Traceback" not in result.output


def test_listing_twice_changes_nothing_and_leaves_the_queue_empty(
    broker: PlainAmqp, ledger: Ledger, settings: Settings
) -> None:
    # Given two dead letters RabbitMQ dead-lettered (no id of the worker's), moved into the
    # ledger
    first, second = new_id("listed"), new_id("listed")
    for request_id in (first, second):
        body, headers = _signed_command(request_id, 100, age=3600)
        deaths = [{"reason": "delivery_limit", "queue": "debits.commands.worker", "count": 1}]
        _dead_letter(broker, body, headers | {"x-death": deaths})
    before = [letter for r in (first, second) for letter in _kept(ledger, r)]
    # When an operator lists them twice, as JSON
    listings = [_dlq(settings, "list", "--state", "all", "--json", "--limit", "1000") for _ in "ab"]
    # Then both listings parse and show both the same, pending, as the ledger holds them
    mine = []
    for listing in listings:
        assert listing.exit_code == 0, listing.output
        mine.append([i for i in json.loads(listing.output) if i["request_id"] in {first, second}])
    assert mine[0] == mine[1]
    assert [(i["request_id"], i["state"], i["stage"]) for i in mine[0]] == [
        (first, "pending", "broker"),
        (second, "pending", "broker"),
    ]
    assert mine[0][0]["reason"] == (
        "dead-lettered by RabbitMQ (delivery_limit) from debits.commands.worker"
    )
    after = [letter for r in (first, second) for letter in _kept(ledger, r)]
    assert after == before
    # And no listing was a delivery: nothing is left in the queue, and each was delivered
    # once, to the keeper that moved it (a quorum queue counts from 0, RabbitMQ 4.x omits 0)
    assert _queued_dead_letters(broker) == 0
    assert [letter.headers.get("x-delivery-count", 0) for letter in after] == [0, 0]


def test_a_replay_by_request_id_replays_that_dead_letter_only(
    broker: PlainAmqp, ledger: Ledger, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given two signed commands dead-lettered a moment after they were received
    wanted, other = new_id("only"), new_id("other")
    for request_id in (wanted, other):
        _dead_letter(broker, *_signed_command(request_id, 200))
    assert _kept(ledger, wanted)
    assert _kept(ledger, other)
    # When the operator replays one of them by its request id
    replayed = _replay(settings, wanted)
    # Then that one is processed and marked replayed; the other stays pending, untouched
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    assert broker.event_for(wanted)["type"] == SUCCEEDED
    assert [letter.state for letter in _kept(ledger, wanted)] == ["replayed"]
    assert [letter.state for letter in _kept(ledger, other)] == ["pending"]
    assert payments_for(sandbox, other) == []


def test_a_discard_is_audited_and_a_discarded_dead_letter_is_never_replayed(
    broker: PlainAmqp, ledger: Ledger, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given a dead-lettered command
    request_id = new_id("discard")
    _dead_letter(broker, *_signed_command(request_id, 300))
    [letter] = _kept(ledger, request_id)
    # When an operator discards it, with why
    discarded = _dlq(
        settings, "discard", "--request-id", request_id, "--reason", "charged by hand", by="bob"
    )
    # Then it says so, and the audit trail holds who, why and which request
    assert discarded.exit_code == 0, discarded.output
    assert f"discarded dead letter {letter.id} (request {request_id}" in discarded.output
    [entry] = ledger.history("dead_letter", str(letter.id))
    assert (entry.action, entry.actor) == ("dead_letter_discarded", "operator:bob")
    assert entry.detail == {"reason": "charged by hand", "request_id": request_id}
    # And a replay of it is refused in one line, and no money moves
    replayed = _replay(settings, request_id)
    assert replayed.exit_code == 1
    assert f"Error: no pending dead letter for request {request_id}" in replayed.output
    assert [gone.state for gone in _kept(ledger, request_id)] == ["discarded"]
    assert payments_for(sandbox, request_id) == []


def test_a_message_the_intake_dead_letters_reaches_the_ledger_through_the_workers_keeper(
    broker: PlainAmqp, ledger: Ledger
) -> None:
    # Given a running worker (its dead-letter keeper every 5 s) and no `dlq` command
    body = f"not json {uuid.uuid4().hex}".encode()
    # When a message it cannot read is published, signed
    broker.publish(body, content_type="application/octet-stream")
    # Then the worker's keeper moves its dead letter into the ledger, with the worker's id,
    # the stage, the reason and the signing producer
    letter = _kept_body(ledger, body)
    assert (letter.stage, letter.state, letter.producer) == ("intake", "pending", "itest")
    assert letter.reason.startswith("body is not JSON")
    assert letter.dedupe_key == letter.headers["x-debit-worker-dead-letter-id"]
    assert letter.request_id is None


def _kept_body(ledger: Ledger, body: bytes, timeout: float = 30.0) -> DeadLetter:
    store = DeadLetterStore(ledger.engine, utc_now)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [letter for letter in store.listed(limit=10_000) if letter.body == body]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no dead letter with body {body!r} kept within {timeout} s")


def test_an_unsigned_copy_of_a_claimed_command_is_decided_under_the_claiming_producers_limit(
    broker: PlainAmqp, ledger: Ledger, sandbox: RunningSandbox
) -> None:
    # Given a 200.00 debit claimed under producer `flood` (daily maximum 100.00), whose
    # worker died before the rules were asked
    request_id = new_id("resumed")
    body = json.dumps(command_body(request_id, US, 20_000)).encode()
    command = DebitRequested.model_validate_json(body)
    ledger.requests.claim(command, "dead-worker", 0.0, producer="flood")
    # When an unsigned copy of it arrives (as a janitor re-enqueue or a late copy would)
    broker.publish(body, headers={})
    # Then it is decided under flood's policy: refused, and no money moves
    event = broker.event_for(request_id)
    assert event["data"]["code"] == "producer_limit_exceeded"
    assert payments_for(sandbox, request_id) == []
