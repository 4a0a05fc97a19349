"""`debit-worker dlq …`: the dead letters kept in the ledger: list, replay, discard.

Each command first moves what waits in the queue debits.dead-letter into the ledger (the
dead-letter keeper, which every worker process also runs), so that it sees everything even
when no worker runs; then it works on the ledger's rows only. Listing changes nothing.
"""

from __future__ import annotations

import base64
import getpass
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import click

from worker.ops.cli_common import CONTEXT, ledger, settings

if TYPE_CHECKING:
    from schemas.signing import Signer
    from worker.adapters.ledger.dead_letters import DeadLetter, DeadLetterStore
    from worker.settings import Settings

# The ledger's states of a dead letter (worker.adapters.ledger.dead_letters.STATES; a test
# keeps them equal), spelled here so that `--help` need not load the ledger.
STATES: Final = ("pending", "replayed", "discarded")
REASON_SHOWN: Final = 70


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        return "operator"


_BY = click.option(
    "--by",
    default=_login,
    show_default="your login name, else operator",
    help="Who acts (the audit trail says operator:WHO).",
)


@click.group(context_settings=CONTEXT)
def dlq() -> None:
    """List, replay and discard dead letters (kept in the ledger from the queue
    debits.dead-letter)."""


@dlq.command("list", context_settings=CONTEXT)
@click.option("--limit", default=20, type=click.IntRange(min=1), help="At most this many.")
@click.option(
    "--state",
    type=click.Choice([*STATES, "all"]),
    default="pending",
    help="Only dead letters in this state.",
)
@click.option("--request-id", help="Only the dead letters of this request.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of objects.")
def dlq_list(limit: int, state: str, request_id: str | None, as_json: bool) -> None:
    """Show dead letters, oldest first: when, which request and producer, at which stage and
    why. They are rows of the ledger: listing never changes them, nor counts as a delivery
    (it first moves anything still waiting in debits.dead-letter into the ledger, as every
    worker process does)."""
    store = _kept(settings())
    letters = store.listed(
        state=None if state == "all" else state, request_id=request_id, limit=limit
    )
    if as_json:
        click.echo(json.dumps([letter_json(letter) for letter in letters], indent=2))
        return
    with_state = state == "all"
    header = f"{'id':>6}  {'time (UTC)':20}  {'request id':32}  {'producer':16}  {'stage':6}  "
    click.echo(header + ("state      " if with_state else "") + "reason")
    for letter in letters:
        line = (
            f"{letter.id:>6}  {_utc(letter.dead_lettered_at):20}  "
            f"{letter.request_id or '-':32}  {letter.producer or '-':16}  {letter.stage:6}  "
        )
        reason = " ".join(letter.reason.split())
        cut = reason if len(reason) <= REASON_SHOWN else reason[: REASON_SHOWN - 1] + "…"
        click.echo(line + (f"{letter.state:9}  " if with_state else "") + cut)
    click.echo(f"{len(letters)} message(s) shown")


@dlq.command("replay", context_settings=CONTEXT)
@click.option(
    "--limit",
    default=1,
    type=click.IntRange(min=1),
    help="How many pending dead letters to replay, oldest first (without --id/--request-id).",
)
@click.option(
    "--request-id",
    "request_ids",
    multiple=True,
    help="Replay the pending dead letters of this request (repeatable).",
)
@click.option(
    "--id", "ids", multiple=True, type=int, help="Replay the dead letter with this id (repeatable)."
)
@_BY
def dlq_replay(limit: int, request_ids: tuple[str, ...], ids: tuple[int, ...], by: str) -> None:
    """Publish pending dead-lettered commands to debits.commands again, then mark them
    replayed (audited). Exits 1, replaying nothing, if an --id or --request-id names no
    pending dead letter.

    Each command goes out as its producer sent it, with its producer's signature headers;
    the operator's key (DEBIT_WORKER_PRODUCER_ID / _KEY_ID / _SECRET, a producer whose
    policy has "may_replay": true) only vouches for when the worker first received it. The
    worker then judges the command by its producer's signature at that moment and decides
    it under that producer's policy: a command that was never validly signed is refused
    (unauthorized) and moves no money. Replaying a command the worker already finished
    re-emits its outcome; a replay interrupted before its mark is replayed again, which the
    worker deduplicates by request id.
    """
    from worker.celery_app import create_app  # noqa: PLC0415 - kept out of `--help`
    from worker.producer import signer_from  # noqa: PLC0415
    from worker.settings import SettingsError  # noqa: PLC0415

    found = settings()
    try:
        signer = signer_from(found)
    except SettingsError:
        raise click.ClickException(
            "replays are vouched for by the operator: set DEBIT_WORKER_PRODUCER_ID, "
            "DEBIT_WORKER_PRODUCER_KEY_ID and DEBIT_WORKER_PRODUCER_SECRET to a key of a "
            'producer whose policy has "may_replay": true'
        ) from None
    store = _kept(found)
    letters = store.pending(ids=ids, request_ids=request_ids, limit=limit)
    _all_named(letters, ids, request_ids, "nothing replayed")
    tasks = create_app(found)  # replays of later attempts are Celery tasks
    replayed = 0
    with tasks.connection_for_write() as conn:
        producer = conn.Producer()
        for letter in letters:
            _publish_again(letter, tasks, producer, signer)  # first: a crash replays again
            replayed += 1
            if not store.mark_replayed(letter.id, by):
                click.echo(f"dead letter {letter.id} was resolved meanwhile by someone else")
    click.echo(f"replayed {replayed} message(s)")


@dlq.command("discard", context_settings=CONTEXT)
@click.option("--request-id", help="Discard the pending dead letters of this request.")
@click.option("--id", "letter_id", type=int, help="Discard the dead letter with this id.")
@click.option("--reason", required=True, help="Why it is discarded (kept in the audit trail).")
@_BY
def dlq_discard(request_id: str | None, letter_id: int | None, reason: str, by: str) -> None:
    """Mark pending dead letters discarded, with the reason (audited): they are never
    replayed. Give --request-id or --id. Exits 1 if nothing pending matches."""
    if (request_id is None) == (letter_id is None):
        raise click.UsageError("give exactly one of --request-id and --id")
    if not reason.strip():
        raise click.BadParameter("say why it is discarded", param_hint="--reason")
    ids = () if letter_id is None else (letter_id,)
    request_ids = () if request_id is None else (request_id,)
    store = _kept(settings())
    letters = store.pending(ids=ids, request_ids=request_ids)
    _all_named(letters, ids, request_ids, "nothing discarded")
    discarded = 0
    for letter in letters:
        if store.discard(letter.id, by, reason):
            discarded += 1
            click.echo(
                f"discarded dead letter {letter.id} (request {letter.request_id or '-'}, "
                f"{letter.stage}: {letter.reason[:REASON_SHOWN]})"
            )
    click.echo(f"discarded {discarded} dead letter(s) by operator:{by}: {reason}")


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    try:
        body, encoding = letter.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(letter.body).decode("ascii"), "base64"
    return {
        "id": letter.id,
        "dead_lettered_at": letter.dead_lettered_at.isoformat(),
        "kept_at": letter.kept_at.isoformat(),
        "request_id": letter.request_id,
        "producer": letter.producer,
        "stage": letter.stage,
        "reason": letter.reason,
        "state": letter.state,
        "resolved_at": letter.resolved_at.isoformat() if letter.resolved_at else None,
        "resolved_by": letter.resolved_by,
        "resolution": letter.resolution,
        "routing_key": letter.routing_key,
        "content_type": letter.content_type,
        "body": body,
        "body_encoding": encoding,
        "headers": letter.headers,
    }


def _kept(found: Settings) -> DeadLetterStore:
    """The ledger's dead letters, once everything waiting in the queue is in them."""
    from worker.adapters.ledger import utc_now  # noqa: PLC0415
    from worker.adapters.ledger.dead_letters import DeadLetterStore  # noqa: PLC0415
    from worker.celery_app import create_app  # noqa: PLC0415
    from worker.ops.dead_letter_keeper import (  # noqa: PLC0415
        ROUND_LIMIT,
        declared_channel,
        keep_dead_letters,
    )

    store = DeadLetterStore(ledger(found).engine, utc_now)
    with create_app(found).connection_for_write() as conn:
        channel = declared_channel(conn)  # the broker first: its failure is the one to name
        while keep_dead_letters(channel, store) == ROUND_LIMIT:
            pass
    return store


def _all_named(
    letters: list[DeadLetter], ids: tuple[int, ...], request_ids: tuple[str, ...], then: str
) -> None:
    """Raises, naming them, unless every id and request id named has a pending dead letter."""
    missing = [f"id {i}" for i in ids if i not in {letter.id for letter in letters}]
    held = {letter.request_id for letter in letters}
    missing += [f"request {r}" for r in request_ids if r not in held]
    if missing:
        raise click.ClickException(
            f"no pending dead letter for {', '.join(missing)}; {then}: "
            "`debit-worker dlq list --state all` shows every dead letter and its state"
        )


def _publish_again(letter: DeadLetter, tasks: Any, producer: Any, signer: Signer) -> None:
    from schemas.topology import COMMAND_ROUTING_KEY  # noqa: PLC0415
    from worker.ops.dead_letter_messages import (  # noqa: PLC0415
        original_message,
        resumed_request,
    )
    from worker.transport.attempts import send_attempt  # noqa: PLC0415
    from worker.transport.topology import PERSISTENT, command_exchange  # noqa: PLC0415

    request_id = resumed_request(letter.body, letter.headers)
    if request_id is not None:
        # A later attempt of a claimed request names the request only, and reads the
        # command and its producer from the ledger: it is scheduled again as it was.
        send_attempt(tasks, request_id)
        return
    command, carried = original_message(letter.body, letter.headers)
    producer.publish(
        command,
        headers=replay_headers(signer, command, carried, letter.dead_lettered_at),
        exchange=command_exchange,
        routing_key=COMMAND_ROUTING_KEY,
        content_type="application/json",
        content_encoding="binary",
        delivery_mode=PERSISTENT,
        mandatory=True,
    )


def replay_headers(
    signer: Signer, command: bytes, headers: dict[str, Any], dead_lettered_at: datetime
) -> dict[str, str]:
    """The producer's own signature headers, and the operator's vouching for the moment the
    worker first received the command (its receipt stamp, else when it was dead-lettered)."""
    from schemas.signing import SIGNATURE_HEADER, SIGNATURE_HEADERS  # noqa: PLC0415
    from worker.transport.authentication import RECEIVED_AT_HEADER  # noqa: PLC0415

    original = {
        name: str(headers[name]) for name in SIGNATURE_HEADERS if headers.get(name) is not None
    }
    received_at = headers.get(RECEIVED_AT_HEADER) or f"{dead_lettered_at.timestamp():.3f}"
    vouched = signer.replay_headers_for(
        command,
        received_at=str(received_at),
        original_signature=original.get(SIGNATURE_HEADER, ""),
    )
    return {**original, **vouched}


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
