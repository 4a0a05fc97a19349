"""Closing the books through the CLI, against a real `debit-worker run` process, the real
sandbox, RabbitMQ and PostgreSQL:

- `debit-worker reconcile` settles a debit Stripe carried out but answered 500 (escalated to
  needs_reconciliation) as succeeded, with Stripe's payment, and its event is sent once;
- `debit-worker reconcile --day D` names each kind of difference planted at Stripe, and
  exits 1; a clean day exits 0;
- `debit-worker settle` refuses, in one line, what Stripe's records do not allow, and
  records a good settlement with its event.

The module has its own vhost, database, sandbox and worker (no reconciliation schedule:
only the CLI settles). Each day proof moves the sandbox's clock to a day no other test has
touched, and resets the sandbox afterwards (its clock back to now).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from tests.integration.conftest import (
    PRODUCER_KEYS,
    PRODUCERS,
    RABBIT,
    STRIPE_KEY,
    PlainAmqp,
    new_id,
    own_database,
    own_ledger,
    own_vhost,
    payments_for,
)
from tests.integration.worker_process import (
    event_client,
    start_worker,
    stop,
    wait,
    wait_until_consuming,
)
from worker.adapters.ledger import Ledger, Status
from worker.adapters.ledger.tables import debit_requests
from worker.ops.cli import main
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox, running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

US = "acct_1ExpressUS00000001"
SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
# Fast escalation (two attempts, short retries, no SDK retries), no reconciliation schedule
# and no scheduled proof, and a grace long enough that no window closes during a test.
QUICK = {
    "DEBIT_WORKER_MAX_ATTEMPTS": "2",
    "DEBIT_WORKER_RETRY_BASE_SECONDS": "0.2",
    "DEBIT_WORKER_RETRY_MAX_SECONDS": "0.5",
    "DEBIT_WORKER_STRIPE_MAX_NETWORK_RETRIES": "0",
    "DEBIT_WORKER_CLAIM_LEASE_SECONDS": "5",
    "DEBIT_WORKER_RELAY_INTERVAL_SECONDS": "1",
    "DEBIT_WORKER_RECONCILE_INTERVAL_SECONDS": "0",
    "DEBIT_WORKER_RECONCILE_GRACE_SECONDS": "3600",
    "DEBIT_WORKER_DAILY_PROOF": "false",
}


@dataclass(frozen=True)
class World:
    sandbox: RunningSandbox
    ledger: Ledger
    events: PlainAmqp
    env: dict[str, str]  # the operator's settings: the worker's own
    log: Path

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=self.env)


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    log = tmp_path_factory.mktemp("reconcile") / "worker.log"
    with ExitStack() as stack:
        vhost = stack.enter_context(contextmanager(own_vhost)())
        database_url = stack.enter_context(contextmanager(own_database)())
        sandbox = stack.enter_context(running_sandbox(api_key=STRIPE_KEY))
        ledger = own_ledger(database_url)
        stack.callback(ledger.engine.dispose)
        events = stack.enter_context(contextmanager(event_client)(vhost))
        worker = start_worker(vhost, database_url, sandbox, log, env=QUICK)
        stack.callback(stop, worker, signal.SIGTERM)
        wait_until_consuming(events, worker, log)
        env = {
            "DEBIT_WORKER_BROKER_URL": f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{vhost}",
            "DEBIT_WORKER_DATABASE_URL": database_url,
            "DEBIT_WORKER_STRIPE_API_KEY": sandbox.api_key,
            "DEBIT_WORKER_STRIPE_API_BASE": sandbox.url,
            "DEBIT_WORKER_PRODUCER_KEYS": json.dumps(PRODUCER_KEYS),
            "DEBIT_WORKER_PRODUCERS": json.dumps(PRODUCERS),
            **QUICK,
        }
        yield World(sandbox, ledger, events, env, log)


@pytest.fixture
def free_day(books: World) -> Iterator[date]:
    """A day no debit of the ledger or charge of the sandbox is dated on, the sandbox clock
    at its noon; afterwards the sandbox is reset (clock back to now, its objects gone)."""
    now = books.sandbox.admin.state().clock["now"]
    with books.ledger.engine.connect() as conn:
        latest = conn.execute(select(func.max(debit_requests.c.charged_at))).scalar()
    last = max(now, latest.timestamp() if latest else now)
    day = datetime.fromtimestamp(last, UTC).date() + timedelta(days=1)
    noon = datetime.combine(day, day_time(12), tzinfo=UTC).timestamp()
    books.sandbox.admin.advance_clock(noon - now)
    yield day
    books.sandbox.admin.reset()


def _escalated(world: World, amount: int) -> tuple[str, dict[str, Any]]:
    """A debit Stripe carries out but answers 500 (stored under its key, so every attempt
    is answered 500), escalated to needs_reconciliation; its request id and Stripe's
    payment."""
    world.sandbox.admin.set_faults(script=("executed_server_error",))
    request_id = world.events.publish_command(**command_body(new_id("unknown"), US, amount))
    _wait_status(world, request_id, Status.NEEDS_RECONCILIATION)
    (payment,) = payments_for(world.sandbox, request_id)
    return request_id, payment


def _wait_status(world: World, request_id: str, status: Status) -> None:
    def reached() -> bool:
        record = world.ledger.requests.get(request_id)
        return record is not None and record.status is status

    wait(reached, world.log, f"request {request_id} never reached {status}")


def _debit(world: World, amount: int) -> tuple[str, dict[str, Any]]:
    """A debit the worker makes and records as succeeded; its request id and payment."""
    request_id = world.events.publish_command(**command_body(new_id("day"), US, amount))
    assert world.events.event_for(request_id)["type"] == SUCCEEDED
    (payment,) = payments_for(world.sandbox, request_id)
    return request_id, payment


def _all_events(client: PlainAmqp, request_id: str, quiet_seconds: float = 2.0) -> list[Any]:
    """The request's events received until none came for `quiet_seconds`."""
    deadline = time.monotonic() + quiet_seconds
    while time.monotonic() < deadline:
        message = client.channel.basic_get(client.events_queue, no_ack=True)
        if message is None:
            time.sleep(0.05)
            continue
        client.received.append(json.loads(message.body))
        deadline = time.monotonic() + quiet_seconds
    return [e for e in client.received if e["subject"] == request_id]


def _json_of(result: Result) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def _errors(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def test_reconcile_settles_a_debit_made_but_answered_500_as_succeeded_with_stripes_payment(
    books: World,
) -> None:
    # Given a debit Stripe carried out but answered 500 on every attempt, so the worker
    # escalated it to needs_reconciliation without an event
    request_id, payment = _escalated(books, 2345)
    assert _all_events(books.events, request_id, quiet_seconds=1) == []
    # When an operator runs `debit-worker reconcile`
    result = books.cli("reconcile", "--json")
    # Then it is settled as succeeded from Stripe's records, with the sandbox's payment
    assert result.exit_code == 0, result.output
    assert request_id in _json_of(result)["settled"], result.output
    record = books.ledger.requests.get(request_id)
    assert record is not None
    assert (record.status, record.payment_id) == (Status.SUCCEEDED, payment["id"])
    settlement = books.ledger.reconciliation.settlement(request_id)
    assert settlement is not None
    assert (settlement.method, settlement.outcome) == ("stripe_records", Status.SUCCEEDED)
    assert [c["id"] for c in settlement.evidence["charges"]] == [payment["id"]]
    # And its DebitSucceeded event arrives once, naming that payment
    events = books.events.events_for(request_id, 1) + _all_events(books.events, request_id)[1:]
    assert [(e["type"], e["data"]["payment"]) for e in events] == [(SUCCEEDED, payment["id"])]
    assert len(payments_for(books.sandbox, request_id)) == 1


def test_settle_refuses_what_stripes_records_do_not_allow_and_records_a_good_charge(
    books: World,
) -> None:
    # Given a request in needs_reconciliation whose debit Stripe did carry out, an hour's
    # grace from its last attempt not yet past
    request_id, payment = _escalated(books, 3456)
    # When an operator declares it not executed, or names a charge Stripe does not have
    early = books.cli("settle", request_id, "--not-executed", "--reason", "x", "--by", "alice")
    wrong = books.cli("settle", request_id, "--charge", "py_wrong", "--by", "alice")
    # Then each is refused in one line, exits non-zero, and nothing is recorded
    for refused in (early, wrong):
        assert refused.exit_code != 0, refused.output
        assert len(_errors(refused)) == 1, refused.output
        assert "Traceback" not in refused.output
    assert "late attempt" in _errors(early)[0]
    assert "py_wrong" in _errors(wrong)[0]
    record = books.ledger.requests.get(request_id)
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION
    assert books.ledger.reconciliation.settlement(request_id) is None
    # When the operator settles it with the charge Stripe holds for it
    good = books.cli("settle", request_id, "--charge", payment["id"], "--by", "alice")
    # Then it is recorded as succeeded, by alice, and its event arrives
    assert good.exit_code == 0, good.output
    settlement = books.ledger.reconciliation.settlement(request_id)
    assert settlement is not None
    assert (settlement.actor, settlement.method, settlement.outcome) == (
        "operator:alice",
        "operator",
        Status.SUCCEEDED,
    )
    event = books.events.event_for(request_id)
    assert (event["type"], event["data"]["payment"]) == (SUCCEEDED, payment["id"])


def test_the_day_proof_names_each_kind_of_difference_planted_at_stripe_and_exits_1(
    books: World, free_day: date
) -> None:
    # Given a day of its own with four debits the worker made, then at Stripe: a second
    # charge for the first request, the second's amount altered, the third's charge gone,
    # and a charge for a request the ledger never saw
    admin = books.sandbox.admin
    (twice, _), (differs, altered), (gone, removed), (matched, _) = (
        _debit(books, amount) for amount in (111, 222, 333, 444)
    )
    admin.create_charge(US, 111, "usd", metadata={"request_id": twice})
    admin.alter_charge(altered["id"], amount=223)
    admin.remove_charge(removed["id"])
    ghost = new_id("ghost")
    stranger = admin.create_charge(US, 555, "usd", metadata={"request_id": ghost})
    # When an operator proves that day
    result = books.cli("reconcile", "--day", free_day.isoformat(), "--json")
    # Then it exits 1, and names each difference with its kind; the first request's own
    # charge and the fourth debit matched
    assert result.exit_code == 1, result.output
    proof = _json_of(result)
    named = {(d["kind"], d["request_id"]) for d in proof["differences"]}
    assert named == {
        ("paid_twice", twice),
        ("differs", differs),
        ("in_ledger_not_at_stripe", gone),
        ("at_stripe_not_in_ledger", ghost),
    }
    assert proof["unexplained"] == 4
    assert proof["matched"] == 2
    assert any(d["charge_id"] == stranger["id"] for d in proof["differences"])
    assert matched not in {request for _, request in named}


def test_the_day_proof_of_a_clean_day_exits_0(books: World, free_day: date) -> None:
    # Given a day of its own with two debits the worker made, untouched at Stripe
    made = [_debit(books, amount)[0] for amount in (666, 777)]
    # When an operator proves that day
    result = books.cli("reconcile", "--day", free_day.isoformat(), "--json")
    # Then both match, nothing differs, and it exits 0
    assert result.exit_code == 0, result.output
    proof = _json_of(result)
    assert (proof["matched"], proof["differences"], proof["status"]) == (2, [], "clean")
    assert len(made) == proof["stripe_charges"] == proof["ledger_debits"]
