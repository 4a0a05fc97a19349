"""`debit-worker`: run the worker, try it, and operate it.

Every command reads its configuration from DEBIT_WORKER_* environment variables (see
`docs/operations.md`); options given here override them.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import click
from kombu import Connection
from pydantic import ValidationError

from schemas.commands import DebitReason, DebitRequested
from schemas.signing import SIGNATURE_HEADER, SIGNATURE_HEADERS, Signer
from schemas.topology import COMMAND_ROUTING_KEY
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.janitor_store import needing_reconciliation
from worker.adapters.ledger.migrate import head_revision, upgrade
from worker.app import build_worker, declare_topology
from worker.celery_app import create_app
from worker.ops.demo import run_demo
from worker.ops.janitor import janitor_once
from worker.ops.observability import configure_logging, init_sentry
from worker.ops.supervisor import exec_supervisor
from worker.producer import DebitProducer, signer_from
from worker.sandbox.cli import sandbox
from worker.settings import Settings, SettingsError, load_settings
from worker.transport.attempts import PROCESS_TASK, send_attempt
from worker.transport.authentication import RECEIVED_AT_HEADER
from worker.transport.plain_consumer import refuse_decompression
from worker.transport.topology import (
    PERSISTENT,
    TASK_QUEUE,
    command_exchange,
    dead_letter_queue,
    declare_all,
)

_CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _ledger(settings: Settings) -> Ledger:
    return Ledger.on(make_engine(settings.database_url, pool_size=2))


@click.group(context_settings=_CONTEXT)
@click.version_option(package_name="debit-worker")
def main() -> None:
    """Debit Worker: pulls money out of Stripe Connect accounts (account debits) on request,
    safely, at Stripe's rate, with a ledger of every cent.

    Producers publish DebitRequested commands to the RabbitMQ exchange `debits.commands`;
    the worker answers each with a DebitSucceeded or DebitFailed event on `debits.events`.
    """


@main.command(context_settings=_CONTEXT)
@click.option(
    "--concurrency", type=int, help="Worker threads [default: DEBIT_WORKER_CONCURRENCY or 64]."
)
@click.option(
    "--processes",
    type=int,
    help="Worker processes on this host, each with its own threads; about one per core "
    "[default: DEBIT_WORKER_PROCESSES or 1].",
)
@click.option(
    "--migrate/--no-migrate", default=True, help="Bring the ledger schema up to date first."
)
@click.option(
    "--loglevel", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), help="Log level."
)
def run(
    concurrency: int | None, processes: int | None, migrate: bool, loglevel: str | None
) -> None:
    """Run the worker: consume commands, debit accounts, publish events, relay the outbox.

    With --processes N (N > 1) this process supervises N worker processes: it restarts one
    that dies, and passes SIGTERM/SIGINT on so each finishes its tasks before stopping. The
    Stripe rate budget stays the host's: shared through Redis if configured, else divided.
    """
    settings = _settings(concurrency=concurrency, log_level=loglevel, processes=processes)
    try:
        settings.require_safe_to_run()  # build_worker checks again; this is before migrating
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings)
    init_sentry(settings)
    if migrate:
        click.echo(f"ledger schema at revision {upgrade(make_engine(settings.database_url))}")
    app, _runtime = build_worker(settings)
    _runtime.services()  # fail now, not on the first command, if a setting is unusable
    declare_topology(app)
    if settings.processes > 1:
        exec_supervisor(settings, settings.processes)
    refuse_decompression()  # no message is ever inflated in a worker process
    # A thread whose reply has arrived waits for the interpreter lock: at the default 5 ms
    # handoff a debit's ~20 round trips add ~100 ms at the median. 1 ms costs a little CPU.
    sys.setswitchinterval(0.001)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.concurrency}",
            f"--queues={TASK_QUEUE}",
            f"--loglevel={settings.log_level}",
            # One node name per process: two workers on one host would otherwise share
            # `celery@host` and the second dies on its remote-control (pidbox) queue.
            f"--hostname=debit-worker.{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@main.command(context_settings=_CONTEXT)
def demo() -> None:
    """Run the whole pipeline on embedded defaults and print each outcome.

    Needs no services: an in-memory broker, a SQLite ledger in a temporary directory and the
    local Stripe sandbox run in this process beside a real worker. Exits non-zero if any
    outcome differs from the expected one.
    """
    sys.exit(1 if run_demo() else 0)


@main.command(context_settings=_CONTEXT)
@click.option("--account", required=True, help="Connected account to debit (acct_…).")
@click.option(
    "--amount",
    required=True,
    type=int,
    help="Amount in the currency's minor unit (cents; yen for jpy).",
)
@click.option("--currency", required=True, help="ISO 4217 code, e.g. usd.")
@click.option(
    "--reason", type=click.Choice([r.value for r in DebitReason]), default="platform_charge"
)
@click.option("--refund", help="The refund a refund_recovery recovers (re_…).")
@click.option("--description", help="Shown on the payment in the Stripe dashboard.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--request-id", help="Idempotency anchor [default: a new random id].")
@click.option("--broker-url", help="[default: DEBIT_WORKER_BROKER_URL]")
def request(  # noqa: PLR0917 - click passes each option
    account: str,
    amount: int,
    currency: str,
    reason: str,
    refund: str | None,
    description: str | None,
    metadata: tuple[str, ...],
    request_id: str | None,
    broker_url: str | None,
) -> None:
    """Publish one DebitRequested command, signed, and print its request id.

    Signs as DEBIT_WORKER_PRODUCER_ID with key DEBIT_WORKER_PRODUCER_KEY_ID and its secret
    DEBIT_WORKER_PRODUCER_SECRET (environment or secret files). Sending the same
    --request-id again is safe: the worker re-emits the first outcome.
    """
    pairs = dict(item.split("=", 1) for item in metadata if "=" in item)
    try:
        command = DebitRequested.model_validate(
            {
                "request_id": request_id or f"cli-{uuid.uuid4().hex}",
                "account": account,
                "amount": amount,
                "currency": currency.lower(),
                "reason": reason,
                "refund": refund,
                "description": description,
                "metadata": pairs,
            }
        )
    except ValidationError as exc:
        raise click.ClickException(f"not a valid command:\n{exc}") from None
    settings = _settings(broker_url=broker_url)
    try:
        signer = signer_from(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    with DebitProducer(settings.broker_url, signer) as producer:
        producer.publish(command)
    click.echo(command.request_id)


main.add_command(sandbox)


@main.group(context_settings=_CONTEXT)
def consent() -> None:
    """Record, revoke and list the accounts' consents to be debited (kept in the ledger)."""


@consent.command("grant", context_settings=_CONTEXT)
@click.argument("account")
@click.option(
    "--agreement", required=True, help="Where the signed agreement is kept (URL or document id)."
)
@click.option(
    "--by", "actor", default=getpass.getuser, help="Who records it (for the audit trail)."
)
def consent_grant(account: str, agreement: str, actor: str) -> None:
    """Record that ACCOUNT consented to be debited."""
    record = _ledger(_settings()).consents.grant(account, agreement, actor)
    click.echo(f"consent recorded for {account} at {record.granted_at.isoformat()} by {actor}")


@consent.command("revoke", context_settings=_CONTEXT)
@click.argument("account")
@click.option(
    "--by", "actor", default=getpass.getuser, help="Who revokes it (for the audit trail)."
)
def consent_revoke(account: str, actor: str) -> None:
    """Revoke ACCOUNT's consent: its debits are refused (consent_missing) from now on."""
    count = _ledger(_settings()).consents.revoke(account, actor)
    click.echo(f"revoked {count} active consent(s) of {account}")


@consent.command("list", context_settings=_CONTEXT)
@click.option("--account", help="Only this account.")
def consent_list(account: str | None) -> None:
    """List consents, active and revoked."""
    for record in _ledger(_settings()).consents.list(account):
        revoked = (
            f"revoked {record.revoked_at.isoformat()} by {record.revoked_by}"
            if record.revoked_at
            else "active"
        )
        granted = f"granted {record.granted_at.isoformat()} by {record.granted_by}"
        click.echo(f"{record.account_id}  {granted}  {revoked}  [{record.agreement_ref}]")


@main.command(context_settings=_CONTEXT)
@click.argument("request_id", required=False)
def status(request_id: str | None) -> None:
    """Show REQUEST_ID's status, its whole history, and the events recorded for it.

    Without REQUEST_ID: how many requests are in each status, and every request waiting for
    an operator (needs_reconciliation).
    """
    ledger = _ledger(_settings())
    if request_id is None:
        _overview(ledger)
        return
    record = ledger.requests.get(request_id)
    events = ledger.outbox.for_request(request_id)
    if record is None and not events:
        raise click.ClickException(f"no request {request_id} in the ledger")
    if record is not None:
        click.echo(f"request {request_id}: {record.status}  attempts={record.attempts}")
        click.echo(f"  command: {json.dumps(record.command, sort_keys=True)}")
        if record.first_attempt_at:
            click.echo(f"  first Stripe attempt: {record.first_attempt_at.isoformat()}")
        if record.payment_id:
            click.echo(f"  payment: {record.payment_id}")
        if record.failure_code:
            click.echo(f"  failure: {record.failure_code}: {record.failure_message}")
        click.echo("  history:")
        for entry in ledger.history("request", request_id):
            detail = json.dumps(entry.detail)
            click.echo(f"    {entry.at.isoformat()}  {entry.action:22} {entry.actor}  {detail}")
    click.echo("  events:")
    for pending in events:
        sent = "sent" if pending.sent else "NOT YET SENT (the relay will retry)"
        click.echo(f"    {pending.event.event_type}  id={pending.event.event_id}  {sent}")


def _overview(ledger: Ledger) -> None:
    counts = ledger.requests.count_by_status()
    click.echo("  ".join(f"{name}={count}" for name, count in sorted(counts.items())) or "empty")
    waiting = needing_reconciliation(ledger.engine, limit=1000)
    if waiting:
        click.echo(f"needs_reconciliation ({len(waiting)}): look each up in Stripe first")
    for record in waiting:
        called = (
            f"first Stripe attempt {record.first_attempt_at.isoformat()}"
            if record.first_attempt_at
            else "Stripe never called (replay is safe)"
        )
        click.echo(
            f"  {record.request_id}  {record.command.get('amount')} "
            f"{record.command.get('currency')} from {record.command.get('account')}  {called}"
        )


@main.command(context_settings=_CONTEXT)
@click.option("--once", is_flag=True, required=True, help="One round, then exit.")
def janitor(once: bool) -> None:  # noqa: ARG001 - the flag documents the only mode
    """Re-enqueue requests whose worker died (lease expired), and escalate requests whose
    first Stripe attempt is near the 24 h key expiry. Every worker also runs this every
    DEBIT_WORKER_JANITOR_INTERVAL_SECONDS."""
    settings = _settings()
    configure_logging(settings)
    init_sentry(settings)
    app, runtime = build_worker(settings)
    services = runtime.services()
    enqueue = functools.partial(send_attempt, app)
    done = janitor_once(services.ledger, enqueue, settings, services.clock())
    click.echo(f"re-enqueued {done.requeued}, escalated {done.escalated}")


@main.group(context_settings=_CONTEXT)
def dlq() -> None:
    """Inspect and replay the dead-letter queue (debits.dead-letter)."""


@dlq.command("list", context_settings=_CONTEXT)
@click.option("--limit", default=20, help="At most this many messages.")
def dlq_list(limit: int) -> None:
    """Show dead-lettered messages with the reason; they stay in the queue."""
    with Connection(_settings().broker_url) as conn:
        channel: Any = conn.channel()
        declare_all(channel)
        seen = []
        for _ in range(limit):
            message = channel.basic_get(dead_letter_queue.name, no_ack=False)
            if message is None:
                break
            seen.append(message)
            headers = message.headers or {}
            reason = headers.get("x-debit-worker-reason") or _death_reason(headers)
            stage = headers.get("x-debit-worker-stage", "broker")
            click.echo(f"- reason: {reason}\n  stage: {stage}\n  body: {message.body[:300]!r}")
        for message in seen:
            channel.basic_reject(message.delivery_tag, requeue=True)
        click.echo(f"{len(seen)} message(s) shown")


@dlq.command("replay", context_settings=_CONTEXT)
@click.option("--limit", default=1, help="How many messages to replay, oldest first.")
def dlq_replay(limit: int) -> None:
    """Publish dead-lettered commands to debits.commands again, then drop them from the DLQ.

    Each command goes out as its producer sent it, with its producer's signature headers;
    the operator's key (DEBIT_WORKER_PRODUCER_ID / _KEY_ID / _SECRET, a producer whose
    policy has "may_replay": true) only vouches for when the worker first received it. The
    worker then judges the command by its producer's signature at that moment and decides
    it under that producer's policy: a command that was never validly signed is refused
    (unauthorized) and moves no money. Replaying a command the worker already finished
    re-emits its outcome.
    """
    settings = _settings()
    try:
        signer = signer_from(settings)
    except SettingsError:
        raise click.ClickException(
            "replays are vouched for by the operator: set DEBIT_WORKER_PRODUCER_ID, "
            "DEBIT_WORKER_PRODUCER_KEY_ID and DEBIT_WORKER_PRODUCER_SECRET to a key of a "
            'producer whose policy has "may_replay": true'
        ) from None
    replayed = 0
    with Connection(settings.broker_url, transport_options={"confirm_publish": True}) as conn:
        channel: Any = conn.channel()
        declare_all(channel)
        producer = conn.Producer()
        tasks = create_app(settings)  # for replays of later attempts, which are Celery tasks
        for _ in range(limit):
            message = channel.basic_get(dead_letter_queue.name, no_ack=False)
            if message is None:
                break
            headers = message.headers or {}
            request_id = _resumed_request(message.body, headers)
            if request_id is not None:
                # A later attempt of a claimed request names the request only, and reads the
                # command and its producer from the ledger: it is scheduled again as it was.
                send_attempt(tasks, request_id)
            else:
                command, carried = original_message(message.body, headers)
                producer.publish(
                    command,
                    headers=replay_headers(signer, command, carried),
                    exchange=command_exchange,
                    routing_key=COMMAND_ROUTING_KEY,
                    content_type="application/json",
                    content_encoding="binary",
                    delivery_mode=PERSISTENT,
                    mandatory=True,
                )
            channel.basic_ack(message.delivery_tag)
            replayed += 1
    click.echo(f"replayed {replayed} message(s)")


def _resumed_request(body: bytes, headers: dict[str, Any]) -> str | None:
    """The request id a dead-lettered `process_debit` task names (None: not such a task, or
    one of the version before, which carried the command's body)."""
    if headers.get("task") != PROCESS_TASK:
        return None
    try:
        first = json.loads(body)[0][0]
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return first if isinstance(first, str) and not first.startswith("{") else None


def original_message(body: bytes, headers: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The command and the headers it came with. Task messages of the version before, which
    RabbitMQ dead-lettered from the task queue, wrap both: unwrap them."""
    if headers.get("task") != PROCESS_TASK:
        return body, headers
    try:
        args, _kwargs, _embed = json.loads(body)
        command = args[0]
        carried = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    except (ValueError, TypeError, IndexError, KeyError):
        return body, headers
    if not isinstance(command, str):
        return body, headers
    return command.encode(), {**carried, "x-death": headers.get("x-death")}


def replay_headers(signer: Signer, command: bytes, headers: dict[str, Any]) -> dict[str, str]:
    """The producer's own signature headers, and the operator's vouching for the moment the
    worker first received the command (its receipt stamp, else when it was dead-lettered,
    else now: then only a recent signature is still accepted)."""
    original = {
        name: str(headers[name]) for name in SIGNATURE_HEADERS if headers.get(name) is not None
    }
    received_at = headers.get(RECEIVED_AT_HEADER)
    if received_at is None:
        deaths = headers.get("x-death") or []
        died = deaths[0].get("time") if deaths and isinstance(deaths[0], dict) else None
        received_at = died.timestamp() if isinstance(died, datetime) else time.time()
    vouched = signer.replay_headers_for(
        command,
        received_at=str(received_at),
        original_signature=original.get(SIGNATURE_HEADER, ""),
    )
    return {**original, **vouched}


def _death_reason(headers: dict[str, Any]) -> str:
    deaths = headers.get("x-death") or []
    return f"dead-lettered by RabbitMQ ({deaths[0].get('reason')})" if deaths else "unknown"


@main.command(context_settings=_CONTEXT)
def migrate() -> None:
    """Create or upgrade the ledger's tables (safe to run any number of times)."""
    settings = _settings()
    revision = upgrade(make_engine(settings.database_url))
    click.echo(f"ledger schema at revision {revision} (newest: {head_revision()})")
