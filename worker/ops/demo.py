"""`debit-worker demo`: the whole pipeline on embedded defaults, no services to install.

An in-memory broker, a SQLite ledger in a temporary directory and the local Stripe sandbox run
in this process beside a real Celery worker. Commands covering each outcome are published the
way any producer would, and each outcome is printed as it arrives.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from celery.contrib.testing.worker import start_worker
from kombu import Connection, Queue

from schemas.signing import Signer
from worker.adapters.ledger import Ledger, utc_now
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.dead_letters import DeadLetter, DeadLetterStore
from worker.adapters.ledger.migrate import upgrade
from worker.app import build_worker
from worker.domain.money import format_amount
from worker.producer import DebitProducer
from worker.sandbox.runner import running_sandbox
from worker.settings import load_settings
from worker.transport.topology import EMBEDDED_BROKER_URL, event_exchange

US = "acct_1ExpressUS00000001"
LEGACY = "acct_1CustomLegacy000001"
STANDARD = "acct_1StandardUS0000001"
JAPAN = "acct_1ExpressJP00000001"
HONG_KONG = "acct_1ExpressHK00000001"
LOW = "acct_1LowBalanceUS00001"
REFUND_USD = "re_1RefundUSD0000000001"
REFUND_EUR = "re_1RefundEUR0000000001"
REFUND_PENDING = "re_1RefundPending000001"
REFUND_FAILED = "re_1RefundFailed0000001"
REFUND_AWAITING_ACTION = "re_1RefundAction0000001"
REFUND_OTHER_ACCOUNT = "re_1RefundOtherAcct0001"  # its sale paid acct_1CustomLegacy000001
# The demo's producer and its key: the worker knows the secret, the producer signs with it.
DEMO_SIGNER = Signer("demo-billing", "demo-2026-11", "demo-only-secret-not-for-production")


@dataclass(frozen=True)
class Scenario:
    title: str
    body: dict[str, Any] | bytes
    expect: str  # "succeeded", a failure code, or "dead-letter"
    signed: bool = True  # False: published without the producer's signature


def command_body(
    request_id: str, account: str, amount: Any, currency: str = "usd", **extra: Any
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "account": account,
        "amount": amount,
        "currency": currency,
        "reason": extra.pop("reason", "platform_charge"),
        **extra,
    }


def scenarios() -> list[Scenario]:
    ok = command_body("demo-fee-001", US, 2500, description="November platform fee")
    return [
        Scenario("platform fee", ok, "succeeded"),
        Scenario("the same command again (duplicate)", ok, "succeeded"),
        Scenario(
            "same request_id, other amount",
            command_body("demo-fee-001", US, 9900),
            "idempotency_conflict",
        ),
        Scenario(
            "legacy Custom account, no controller",
            command_body("demo-fee-002", LEGACY, 1000),
            "consent_missing",
        ),
        Scenario(
            "cross-border US → HK",
            command_body("demo-fee-003", HONG_KONG, 5000, "hkd"),
            "succeeded",
        ),
        Scenario(
            "amount as a string", command_body("demo-bad-001", US, "25.00"), "invalid_request"
        ),
        Scenario(
            "unknown account",
            command_body("demo-bad-002", "acct_1DoesNotExist0000001", 100),
            "account_not_found",
        ),
        Scenario(
            "Standard account (Stripe carries losses)",
            command_body("demo-bad-003", STANDARD, 100),
            "account_ineligible",
        ),
        Scenario(
            "US platform → JP account",
            command_body("demo-bad-004", JAPAN, 1500, "jpy"),
            "region_unsupported",
        ),
        Scenario(
            "EUR from a USD account",
            command_body("demo-bad-005", US, 100, "eur"),
            "currency_mismatch",
        ),
        Scenario(
            "100,000.01 USD", command_body("demo-bad-006", US, 10_000_001), "amount_exceeds_limit"
        ),
        Scenario(
            "more than the balance", command_body("demo-bad-007", LOW, 1000), "insufficient_balance"
        ),
        Scenario(
            "refund recovery 30.00 of 50.00",
            command_body("demo-rr-001", US, 3000, reason="refund_recovery", refund=REFUND_USD),
            "succeeded",
        ),
        Scenario(
            "another 30.00 from the same refund",
            command_body("demo-rr-002", US, 3000, reason="refund_recovery", refund=REFUND_USD),
            "refund_recovery_exceeds_refund",
        ),
        Scenario(
            "recovery of an EUR refund in USD",
            command_body("demo-rr-003", US, 100, reason="refund_recovery", refund=REFUND_EUR),
            "refund_currency_mismatch",
        ),
        Scenario(
            "recovery of an unknown refund",
            command_body(
                "demo-rr-004", US, 100, reason="refund_recovery", refund="re_1DoesNotExist000001"
            ),
            "refund_not_found",
        ),
        Scenario(
            "recovery of a pending refund",
            command_body("demo-rr-005", US, 1000, reason="refund_recovery", refund=REFUND_PENDING),
            "succeeded",
        ),
        Scenario(
            "recovery of a failed refund",
            command_body("demo-rr-006", US, 1000, reason="refund_recovery", refund=REFUND_FAILED),
            "refund_not_recoverable",
        ),
        Scenario(
            "recovery of a refund awaiting action",
            command_body(
                "demo-rr-007", US, 1000, reason="refund_recovery", refund=REFUND_AWAITING_ACTION
            ),
            "refund_requires_action",
        ),
        Scenario(
            "recovery of another account's sale",
            command_body(
                "demo-rr-008", US, 1000, reason="refund_recovery", refund=REFUND_OTHER_ACCOUNT
            ),
            "refund_account_mismatch",
        ),
        Scenario(
            "an unsigned command (no producer identity)",
            command_body("demo-unsigned-001", US, 2500),
            "unauthorized",
            signed=False,
        ),
        Scenario("a message that is not JSON", b"\x00\xffnot json", "dead-letter"),
    ]


@contextmanager
def _embedded(workdir: Path) -> Iterator[tuple[Any, Any, Ledger, Connection]]:
    database_url = f"sqlite:///{workdir / 'ledger.sqlite3'}"
    engine = make_engine(database_url)
    upgrade(engine)
    ledger = Ledger.on(engine)
    with running_sandbox() as sandbox:
        settings = load_settings(
            broker_url=EMBEDDED_BROKER_URL,
            database_url=database_url,
            stripe_api_key=sandbox.api_key,
            stripe_api_base=sandbox.url,
            concurrency=4,
            relay_interval_seconds=1.0,
            dead_letter_keep_interval_seconds=0.5,
            producer_keys={DEMO_SIGNER.producer: {DEMO_SIGNER.key_id: DEMO_SIGNER.secret}},
        )
        app, _runtime = build_worker(settings)
        with Connection(EMBEDDED_BROKER_URL) as connection:
            yield app, sandbox, ledger, connection


def run_demo(echo: Any = click.echo) -> int:
    """Returns the number of scenarios whose outcome was not the expected one."""
    logging.getLogger("stripe").setLevel(logging.WARNING)
    with (
        tempfile.TemporaryDirectory(prefix="debit-worker-demo-") as tmp,
        _embedded(Path(tmp)) as (app, sandbox, ledger, connection),
    ):
        for account in (US, STANDARD, JAPAN, HONG_KONG, LOW):
            ledger.consents.grant(account, "demo-agreement-2026", "demo")
        events = Queue("demo.events", event_exchange, routing_key="debit.*")
        events(connection.default_channel).declare()
        # kombu accepts a Queue here; its type stubs only know queue names.
        inbox = connection.SimpleQueue(events)  # type: ignore[arg-type]
        # The worker's dead-letter keeper moves dead letters from their queue to the ledger.
        dead = DeadLetterStore(ledger.engine, utc_now)
        with (
            start_worker(
                app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"
            ),
            DebitProducer(EMBEDDED_BROKER_URL, DEMO_SIGNER) as producer,
            DebitProducer(EMBEDDED_BROKER_URL) as unsigned,
        ):
            echo(f"{'scenario':44} {'expected':32} {'outcome':32} detail")
            echo("-" * 140)
            misses = sum(
                not _play(s, producer if s.signed else unsigned, inbox, dead, echo)
                for s in scenarios()
            )
        state = sandbox.admin.state()
        echo("-" * 140)
        echo(
            f"sandbox: {len(state.payments)} payment(s) created; money invariants: "
            f"{'hold' if not state.problems else state.problems}"
        )
        echo(f"ledger: {ledger.requests.count_by_status()}")
        echo("all outcomes as expected" if not misses else f"{misses} unexpected outcome(s)")
        return misses


def _play(
    s: Scenario, producer: DebitProducer, inbox: Any, dead: DeadLetterStore, echo: Any
) -> bool:
    if isinstance(s.body, bytes):
        producer.publish_raw(s.body, content_type="application/octet-stream")
        letter = _next_dead_letter(dead, s.body)
        outcome = "dead-letter"
        detail = f"kept in the ledger (dead letter {letter.id}, {letter.stage}): {letter.reason}"
    else:
        producer.publish_raw(json.dumps(s.body), message_id=str(s.body["request_id"]))
        message = _next_event(inbox, str(s.body["request_id"]))
        data = message["data"]
        if message["type"].endswith("succeeded.v1"):
            outcome = "succeeded"
            amount = format_amount(data["amount"], data["currency"])
            detail = f"{amount} payment {data['payment']} (event {message['id'][:8]})"
        else:
            outcome = data["code"]
            detail = data["message"]
    ok = outcome == s.expect
    mark = "" if ok else "  <-- UNEXPECTED"
    echo(f"{s.title:44} {s.expect:32} {outcome:32} {detail[:110]}{mark}")
    return ok


def _next_dead_letter(dead: DeadLetterStore, body: bytes, timeout: float = 20.0) -> DeadLetter:
    """The pending dead letter holding `body`, once the keeper has kept it."""
    deadline = time.monotonic() + timeout
    while True:
        for letter in dead.listed(limit=1000):
            if letter.body == body:
                return letter
        if time.monotonic() > deadline:
            raise TimeoutError(f"no dead letter kept in the ledger within {timeout:.0f} s")
        time.sleep(0.1)


def _next_event(inbox: Any, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = inbox.get(timeout=max(0.1, deadline - time.monotonic()))
        event: dict[str, Any] = json.loads(message.body)
        message.ack()
        if event["subject"] == request_id:
            return event
