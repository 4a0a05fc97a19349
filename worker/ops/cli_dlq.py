"""`debit-worker dlq …`: inspect and replay the dead-letter queue (debits.dead-letter)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from worker.ops.cli_common import CONTEXT, settings

if TYPE_CHECKING:
    from schemas.signing import Signer


@click.group(context_settings=CONTEXT)
def dlq() -> None:
    """Inspect and replay the dead-letter queue (debits.dead-letter)."""


@dlq.command("list", context_settings=CONTEXT)
@click.option("--limit", default=20, help="At most this many messages.")
def dlq_list(limit: int) -> None:
    """Show dead-lettered messages with the reason; they stay in the queue."""
    from kombu import Connection  # noqa: PLC0415 - kept out of `--help`

    from worker.transport.topology import dead_letter_queue, declare_all  # noqa: PLC0415

    with Connection(settings().broker_url) as conn:
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


@dlq.command("replay", context_settings=CONTEXT)
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
    # Kept out of `--help`: the broker client, Celery and the worker's modules.
    from kombu import Connection  # noqa: PLC0415

    from schemas.topology import COMMAND_ROUTING_KEY  # noqa: PLC0415
    from worker.celery_app import create_app  # noqa: PLC0415
    from worker.producer import signer_from  # noqa: PLC0415
    from worker.settings import SettingsError  # noqa: PLC0415
    from worker.transport.attempts import send_attempt  # noqa: PLC0415
    from worker.transport.topology import (  # noqa: PLC0415
        PERSISTENT,
        command_exchange,
        dead_letter_queue,
        declare_all,
    )

    found = settings()
    try:
        signer = signer_from(found)
    except SettingsError:
        raise click.ClickException(
            "replays are vouched for by the operator: set DEBIT_WORKER_PRODUCER_ID, "
            "DEBIT_WORKER_PRODUCER_KEY_ID and DEBIT_WORKER_PRODUCER_SECRET to a key of a "
            'producer whose policy has "may_replay": true'
        ) from None
    replayed = 0
    with Connection(found.broker_url, transport_options={"confirm_publish": True}) as conn:
        channel: Any = conn.channel()
        declare_all(channel)
        producer = conn.Producer()
        tasks = create_app(found)  # for replays of later attempts, which are Celery tasks
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
    from worker.transport.attempts import PROCESS_TASK  # noqa: PLC0415

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
    from worker.transport.attempts import PROCESS_TASK  # noqa: PLC0415

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
    from schemas.signing import SIGNATURE_HEADER, SIGNATURE_HEADERS  # noqa: PLC0415
    from worker.transport.authentication import RECEIVED_AT_HEADER  # noqa: PLC0415

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
