"""`debit-worker`: run the worker, try it, and operate it.

Every command reads its configuration from DEBIT_WORKER_* environment variables (see
`docs/operations.md`); options given here override them.

Loading this module loads click and the CLI's own small modules only: each command imports
what it uses when it runs, so `--help` answers at once. Every failure an operator can fix
ends in one `Error: …` line (worker/ops/cli_errors.py).
"""

from __future__ import annotations

import importlib
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Final

import click

from worker.ops.cli_common import CONTEXT, ledger, settings
from worker.ops.cli_consent import consent
from worker.ops.cli_dlq import dlq
from worker.ops.cli_errors import AnsweringGroup
from worker.ops.cli_requests import requests, status
from worker.ops.reconcile_cli import register as register_reconciliation

# DebitReason's values (schemas.commands; a test keeps them equal), spelled here so that
# `--help` need not load the message contract.
REASONS: Final = ("platform_charge", "refund_recovery", "adjustment")


@dataclass(frozen=True)
class Lazy:
    """A command in a module of its own, loaded when it is run or asked for its help."""

    module: str
    name: str
    summary: str  # the first sentence of its help, for the list of commands


class RootGroup(AnsweringGroup):
    lazy: Final[dict[str, Lazy]] = {
        "sandbox": Lazy(
            "worker.sandbox.cli",
            "sandbox",
            "Serve a local, stateful Stripe for account debits (POST /v1/charges source=acct_...).",
        ),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in self.lazy:
            entry = self.lazy[cmd_name]
            found = getattr(importlib.import_module(entry.module), entry.name)
            assert isinstance(found, click.Command)
            self.add_command(found, cmd_name)
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The list of commands names the lazy ones without loading them.
        shown = [
            (name, command)
            for name in self.list_commands(ctx)
            if (command := self._listed(ctx, name)) is not None and not command.hidden
        ]
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section("Commands"):
                formatter.write_dl(
                    [(name, command.get_short_help_str(limit)) for name, command in shown]
                )

    def _listed(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in self.lazy:
            return super().get_command(ctx, name)
        return click.Command(name, help=self.lazy[name].summary)


@click.group(cls=RootGroup, context_settings=CONTEXT)
@click.version_option(package_name="debit-worker")
def main() -> None:
    """Debit Worker: pulls money out of Stripe Connect accounts (account debits) on request,
    safely, at Stripe's rate, with a ledger of every cent.

    Producers publish DebitRequested commands to the RabbitMQ exchange `debits.commands`;
    the worker answers each with a DebitSucceeded or DebitFailed event on `debits.events`.
    """


@main.command(context_settings=CONTEXT)
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
    from worker.ops.cli_run import run_worker  # noqa: PLC0415 - the worker, only to run it

    found = settings(concurrency=concurrency, log_level=loglevel, processes=processes)
    run_worker(found, migrate=migrate, echo=click.echo)


@main.command(context_settings=CONTEXT)
def demo() -> None:
    """Run the whole pipeline on embedded defaults and print each outcome.

    Needs no services: an in-memory broker, a SQLite ledger in a temporary directory and the
    local Stripe sandbox run in this process beside a real worker. Exits non-zero if any
    outcome differs from the expected one.
    """
    from worker.ops.demo import run_demo  # noqa: PLC0415

    sys.exit(1 if run_demo() else 0)


def _metadata(
    _ctx: click.Context, _param: click.Parameter, items: tuple[str, ...]
) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        if not key.strip():
            raise click.BadParameter(f"{item!r} has an empty KEY")
        if key in pairs:
            raise click.BadParameter(f"{key!r} is given twice")
        pairs[key] = value
    return pairs


@main.command(context_settings=CONTEXT)
@click.option("--account", required=True, help="Connected account to debit (acct_…).")
@click.option(
    "--amount",
    required=True,
    type=int,
    help="Amount in the currency's minor unit (cents; yen for jpy).",
)
@click.option("--currency", required=True, help="ISO 4217 code, e.g. usd.")
@click.option("--reason", type=click.Choice(REASONS), default="platform_charge")
@click.option("--refund", help="The refund a refund_recovery recovers (re_…).")
@click.option("--description", help="Shown on the payment in the Stripe dashboard.")
@click.option(
    "--metadata",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_metadata,
    help="Copied to the Stripe payment. Repeatable; each KEY once.",
)
@click.option("--request-id", help="Idempotency anchor [default: a new random id].")
@click.option("--broker-url", help="[default: DEBIT_WORKER_BROKER_URL]")
def request(  # click passes every option by keyword
    *,
    account: str,
    amount: int,
    currency: str,
    reason: str,
    refund: str | None,
    description: str | None,
    metadata: dict[str, str],
    request_id: str | None,
    broker_url: str | None,
) -> None:
    """Publish one DebitRequested command, signed, and print its request id.

    Signs as DEBIT_WORKER_PRODUCER_ID with key DEBIT_WORKER_PRODUCER_KEY_ID and its secret
    DEBIT_WORKER_PRODUCER_SECRET (environment or secret files). Sending the same
    --request-id again is safe: the worker re-emits the first outcome.
    """
    # Kept out of `--help`: the message contract and the broker client.
    from pydantic import ValidationError  # noqa: PLC0415

    from schemas.commands import DebitRequested  # noqa: PLC0415
    from worker.producer import DebitProducer, signer_from  # noqa: PLC0415

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
                "metadata": metadata,
            }
        )
    except ValidationError as exc:
        raise click.ClickException(f"not a valid command: {_problems(exc)}") from None
    found = settings(broker_url=broker_url)
    signer = signer_from(found)
    with DebitProducer(found.broker_url, signer) as producer:
        producer.publish(command)
    click.echo(command.request_id)


def _problems(exc: Any) -> str:
    """A pydantic ValidationError's problems on one line, each naming its field."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
    )


@main.command(context_settings=CONTEXT)
@click.option("--once", is_flag=True, required=True, help="One round, then exit.")
def janitor(once: bool) -> None:  # noqa: ARG001 - the flag documents the only mode
    """Re-enqueue requests whose worker died (lease expired), and escalate requests whose
    first Stripe attempt is near the 24 h key expiry. Every worker also runs this every
    DEBIT_WORKER_JANITOR_INTERVAL_SECONDS."""
    import functools  # noqa: PLC0415

    from worker.app import build_worker  # noqa: PLC0415
    from worker.ops.janitor import janitor_once  # noqa: PLC0415
    from worker.ops.observability import configure_logging, init_sentry  # noqa: PLC0415
    from worker.transport.attempts import send_attempt  # noqa: PLC0415

    found = settings()
    configure_logging(found)
    init_sentry(found)
    app, runtime = build_worker(found)
    services = runtime.services()
    enqueue = functools.partial(send_attempt, app)
    done = janitor_once(services.ledger, enqueue, found, services.clock())
    click.echo(f"re-enqueued {done.requeued}, escalated {done.escalated}")


@main.command(context_settings=CONTEXT)
@click.option("--once", is_flag=True, required=True, help="One round, then exit.")
def retention(once: bool) -> None:  # noqa: ARG001 - the flag documents the only mode
    """Remove outbox events sent more than DEBIT_WORKER_OUTBOX_RETENTION_SECONDS ago, and
    producers' reservations as old (at least a day), until none is left. Every worker also
    runs this every DEBIT_WORKER_RETENTION_INTERVAL_SECONDS, one process at a time."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from worker.ops.retention import retention_once  # noqa: PLC0415

    found = settings()
    if found.outbox_retention_seconds <= 0:
        click.echo("retention is off (DEBIT_WORKER_OUTBOX_RETENTION_SECONDS=0): nothing removed")
        return
    engine = ledger(found).engine
    done = retention_once(
        engine, datetime.now(UTC), found.outbox_retention_seconds, round_seconds=None
    )
    if not done.ran:
        raise click.ClickException(
            "another process is running the retention now: run the command again later"
        )
    click.echo(f"removed {done.events} sent event(s) and {done.reservations} reservation(s)")


@main.command(context_settings=CONTEXT)
def migrate() -> None:
    """Create or upgrade the ledger's tables (safe to run any number of times)."""
    from worker.adapters.ledger.database import make_engine  # noqa: PLC0415
    from worker.adapters.ledger.migrate import head_revision, upgrade  # noqa: PLC0415

    found = settings()
    revision = upgrade(make_engine(found.database_url))
    click.echo(f"ledger schema at revision {revision} (newest: {head_revision()})")


main.add_command(consent)
main.add_command(status)
main.add_command(requests)
main.add_command(dlq)
register_reconciliation(main)
