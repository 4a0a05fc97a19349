"""`debit-worker reconcile` and `debit-worker settle`: closing the books by hand or from a
script. Each builds the worker's own services (ledger, Stripe gateway, rate budget, event
publisher) from the DEBIT_WORKER_* settings, as `janitor --once` does."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import date
from typing import TYPE_CHECKING, Any

import click

from worker.ops.cli_common import CONTEXT as _CONTEXT
from worker.ops.cli_common import settings as cli_settings

# The worker's modules are imported by the commands when they run: `--help` stays fast.
if TYPE_CHECKING:
    from worker.handlers import Services
    from worker.ops.daily_proof import ProofRun
    from worker.ops.reconciler import RoundReport
    from worker.settings import Settings


def _services() -> tuple[Settings, Services, str]:
    from worker.app import build_worker  # noqa: PLC0415
    from worker.ops.observability import configure_logging, init_sentry  # noqa: PLC0415

    settings = cli_settings()  # a bad setting ends the command in one line (cli_errors)
    configure_logging(settings)
    init_sentry(settings)
    _, runtime = build_worker(settings)
    return settings, runtime.services(), runtime.identity


def _day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day as YYYY-MM-DD") from None


@click.command(context_settings=_CONTEXT)
@click.option(
    "--day",
    callback=_day,
    metavar="YYYY-MM-DD",
    help="Prove this UTC day instead: match every account-debit charge Stripe holds for it "
    "one to one with the ledger; exit 1 on any unexplained difference.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def reconcile(day: date | None, as_json: bool) -> None:
    """Settle every request whose Stripe outcome is unknown (needs_reconciliation) from
    Stripe's own records, once, then exit. Every worker also does this every
    DEBIT_WORKER_RECONCILE_INTERVAL_SECONDS, and proves the day before once a day."""
    from worker.ops.daily_proof import prove  # noqa: PLC0415
    from worker.ops.reconciler import Reconciler  # noqa: PLC0415

    settings, services, identity = _services()
    records = services.require_records()
    if day is not None:
        run = prove(services.ledger, records, day, "cli")
        _print_proof(run, as_json)
        if run.proof.unexplained:
            sys.exit(1)
        return
    report = Reconciler(
        services,
        records,
        grace_seconds=settings.reconcile_grace_seconds,
        owner=f"reconciler:{identity}",
    ).settle_round()
    _print_round(report, as_json)


def _print_round(report: RoundReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.__dict__, sort_keys=True))
        return
    click.echo(
        f"settled {len(report.settled)}, still open {len(report.still_open)}, ambiguous "
        f"{len(report.ambiguous)}, left to a person {len(report.for_a_person)}; "
        f"{report.list_requests} list request(s) to Stripe"
    )
    for title, rows in (
        ("settled", report.settled),
        ("still open", report.still_open),
        ("AMBIGUOUS (alerted; a person must look)", report.ambiguous),
    ):
        for request_id, what in rows.items():
            click.echo(f"  {title}: {request_id}: {what}")
    for request_id in report.for_a_person:
        click.echo(
            f"  never reached Stripe: {request_id}: `debit-worker settle {request_id} "
            "--not-executed --reason …` or replay it"
        )


def _print_proof(run: ProofRun, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(run.as_json(), sort_keys=True))
        return
    proof = run.proof
    click.echo(
        f"day {run.day.isoformat()} (run {run.run_id}): {proof.stripe_charges} charge(s) at "
        f"Stripe, {proof.ledger_debits} success(es) in the ledger, {proof.matched} matched, "
        f"{len(proof.differences)} difference(s), {proof.unexplained} unexplained; "
        f"{run.list_requests} list request(s)"
    )
    if not proof.differences:
        return
    click.echo(f"  {'kind':25} {'request':28} {'charge':30} explained  detail")
    for d in proof.differences:
        detail = json.dumps(d.detail, sort_keys=True)
        click.echo(
            f"  {d.kind!s:25} {d.request_id or '-':28} {d.charge_id or '-':30} "
            f"{'yes' if d.explained else 'NO':9}  {detail}"
        )


@click.command(context_settings=_CONTEXT)
@click.argument("request_id")
@click.option("--charge", "charge_id", metavar="py_…", help="The charge found for it at Stripe.")
@click.option(
    "--not-executed",
    is_flag=True,
    help="Declare that Stripe never carried it out (checked against Stripe's records).",
)
@click.option("--reason", help="Why, for the audit trail (required with --not-executed).")
@click.option(
    "--by",
    "operator",
    default=getpass.getuser,
    show_default="your login name",
    help="Who settles it (audited).",
)
def settle(
    request_id: str, charge_id: str | None, not_executed: bool, reason: str | None, operator: str
) -> None:
    """Settle REQUEST_ID (in needs_reconciliation) by hand: with the charge found at Stripe,
    or declaring it not executed. Verified against Stripe before anything is recorded; the
    request's DebitSucceeded or DebitFailed (not_executed) event is sent."""
    if (charge_id is None) == (not not_executed):
        raise click.UsageError("give exactly one of --charge py_… or --not-executed --reason …")
    if not_executed and not reason:
        raise click.UsageError("--not-executed needs --reason (it goes into the audit trail)")
    from worker.ops.operator_settle import (  # noqa: PLC0415
        SettleRefused,
        settle_not_executed,
        settle_with_charge,
    )

    settings, services, _ = _services()
    records = services.require_records()
    try:
        if charge_id is not None:
            outcome = settle_with_charge(services, records, request_id, charge_id, operator)
        else:
            outcome = settle_not_executed(
                services,
                records,
                request_id,
                str(reason),
                operator,
                grace_seconds=settings.reconcile_grace_seconds,
            )
    except SettleRefused as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(f"request {request_id} settled: {outcome}; its event is recorded and published")


def register(group: Any) -> None:
    group.add_command(reconcile)
    group.add_command(settle)
