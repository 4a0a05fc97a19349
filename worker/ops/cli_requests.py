"""`debit-worker status` and `debit-worker requests list`: what the ledger holds, for people
(text) and for scripts (`--json`)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import click

from worker.ops.cli_common import CONTEXT, ledger, settings

if TYPE_CHECKING:
    from worker.adapters.ledger import Ledger
    from worker.adapters.ledger.outbox_store import PendingEvent
    from worker.adapters.ledger.records import RequestRecord

# The ledger's statuses (worker.adapters.ledger.tables.Status; a test keeps them equal),
# spelled here so that `--help` need not load the ledger.
STATES: Final = ("received", "attempting", "succeeded", "failed", "needs_reconciliation")
_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@click.command(context_settings=CONTEXT)
@click.argument("request_ids", nargs=-1, metavar="[REQUEST_ID]...")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: an array with one object per REQUEST_ID found, or the overview object.",
)
def status(request_ids: tuple[str, ...], as_json: bool) -> None:
    """Show each REQUEST_ID's status, its whole history, and the events recorded for it;
    exits 1 if one is not in the ledger.

    Without REQUEST_ID: how many requests are in each status, and every request whose
    outcome is unknown (needs_reconciliation).
    """
    found = ledger(settings())
    if not request_ids:
        _overview(found, as_json)
        return
    shown = [_request(found, request_id) for request_id in request_ids]
    missing = [request_id for request_id, item in zip(request_ids, shown, strict=True) if not item]
    if as_json:
        click.echo(json.dumps([item for item in shown if item], indent=2))
    else:
        for item in shown:
            if item:
                _print_request(item)
    if missing:
        raise click.ClickException(f"no request {', '.join(missing)} in the ledger")


def _request(found: Ledger, request_id: str) -> dict[str, Any]:
    """Everything the ledger holds about one request ({} when it holds nothing)."""
    record = found.requests.get(request_id)
    events = found.outbox.for_request(request_id)
    if record is None and not events:
        return {}
    item: dict[str, Any] = {"request_id": request_id, "status": None}
    if record is not None:
        item |= record_json(record)
        item["history"] = [
            {
                "at": entry.at.isoformat(),
                "action": entry.action,
                "actor": entry.actor,
                "detail": entry.detail,
            }
            for entry in found.history("request", request_id)
        ]
    item["events"] = [_event_json(pending) for pending in events]
    return item


def record_json(record: RequestRecord) -> dict[str, Any]:
    """A request's ledger row as JSON (times in ISO 8601, UTC)."""
    command = record.command
    return {
        "request_id": record.request_id,
        "status": str(record.status),
        "account": command.get("account"),
        "amount": command.get("amount"),
        "currency": command.get("currency"),
        "reason": command.get("reason"),
        "producer": record.producer,
        "attempts": record.attempts,
        "received_at": _time(record.received_at),
        "updated_at": _time(record.updated_at),
        "first_attempt_at": _time(record.first_attempt_at),
        "finished_at": _time(record.finished_at),
        "payment_id": record.payment_id,
        "failure_code": record.failure_code,
        "failure_message": record.failure_message,
        "command": command,
    }


def _event_json(pending: PendingEvent) -> dict[str, Any]:
    return {
        "type": pending.event.event_type,
        "id": pending.event.event_id,
        "sent": pending.sent,
        "recorded_at": _time(pending.created_at),
    }


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _print_request(item: dict[str, Any]) -> None:
    request_id = item["request_id"]
    if item["status"] is not None:
        click.echo(f"request {request_id}: {item['status']}  attempts={item['attempts']}")
        click.echo(f"  command: {json.dumps(item['command'], sort_keys=True)}")
        if item["first_attempt_at"]:
            click.echo(f"  first Stripe attempt: {item['first_attempt_at']}")
        if item["payment_id"]:
            click.echo(f"  payment: {item['payment_id']}")
        if item["failure_code"]:
            click.echo(f"  failure: {item['failure_code']}: {item['failure_message']}")
        click.echo("  history:")
        for entry in item["history"]:
            detail = json.dumps(entry["detail"])
            click.echo(f"    {entry['at']}  {entry['action']:22} {entry['actor']}  {detail}")
    else:
        click.echo(
            f"request {request_id}: no request record (an invalid command or a conflicting "
            "duplicate: only its event)"
        )
    click.echo("  events:")
    for event in item["events"]:
        sent = "sent" if event["sent"] else "NOT YET SENT (the relay will retry)"
        click.echo(f"    {event['type']}  id={event['id']}  {sent}")


def _overview(found: Ledger, as_json: bool) -> None:
    from worker.adapters.ledger.janitor_store import needing_reconciliation  # noqa: PLC0415

    counts = found.requests.count_by_status()
    waiting = needing_reconciliation(found.engine, limit=1000)
    if as_json:
        listed = [record_json(record) for record in waiting]
        click.echo(json.dumps({"counts": counts, "needs_reconciliation": listed}, indent=2))
        return
    click.echo("  ".join(f"{name}={count}" for name, count in sorted(counts.items())) or "empty")
    if waiting:
        click.echo(
            f"needs_reconciliation ({len(waiting)}): the reconciler settles these from "
            "Stripe's records (`debit-worker reconcile` runs it now)"
        )
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


@click.group(context_settings=CONTEXT)
def requests() -> None:
    """Find requests in the ledger."""


def since_moment(value: str, now: datetime) -> datetime:
    """An age (90s, 15m, 2h, 7d) back from `now`, or an ISO 8601 date or time (UTC unless
    it names its zone)."""
    age = _AGE.match(value.strip())
    if age:
        return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an age (90s, 15m, 2h, 7d) nor an ISO 8601 time "
            "(2026-12-01, 2026-12-01T09:30:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    return None if value is None else since_moment(value, datetime.now(UTC))


@requests.command("list", context_settings=CONTEXT)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES),
    help="Only requests in this status (repeatable: any of them).",
)
@click.option("--account", help="Only this connected account's requests (acct_…).")
@click.option("--producer", help="Only the requests this producer signed.")
@click.option(
    "--since",
    callback=_since,
    metavar="AGE|TIME",
    help="Only requests received since: an age (90s, 15m, 2h, 7d) or an ISO 8601 date or time "
    "(UTC unless it names its zone).",
)
@click.option("--limit", default=50, type=click.IntRange(min=1), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def requests_list(  # click passes every option by keyword
    *,
    states: tuple[str, ...],
    account: str | None,
    producer: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List requests, newest first, that match every filter given."""
    from worker.adapters.ledger.request_list import RequestQuery, list_requests  # noqa: PLC0415

    query = RequestQuery(states, account, producer, since, limit)
    found = list_requests(ledger(settings()).engine, query)
    if as_json:
        click.echo(json.dumps([record_json(record) for record in found], indent=2))
        return
    for record in found:
        command = record.command
        failure = f"  {record.failure_code}" if record.failure_code else ""
        click.echo(
            f"{record.received_at.isoformat(timespec='seconds')}  {record.request_id}  "
            f"{record.status}  {command.get('amount')} {command.get('currency')}  "
            f"{command.get('account')}  producer={record.producer or '-'}  "
            f"attempts={record.attempts}{failure}"
        )
    reached = " (--limit reached)" if len(found) == limit else ""
    click.echo(f"{len(found)} request(s){reached}")
