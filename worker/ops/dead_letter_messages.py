"""What a dead-lettered message says: the row the keeper keeps of it (its time, request,
producer, stage and reason), and the command inside a Celery task message. The one reader of
dead letters' bytes, for the keeper and for `dlq replay`.

A dead letter is anything that reached `debits.dead-letter`: published by the worker
(worker/transport/publisher.py DeadLetters, with its `x-debit-worker-*` headers), or
dead-lettered by RabbitMQ itself (a delivery limit reached, a rejection: `x-death` headers),
or published there by anyone. None of it is trusted: every field is bounded and made storable,
and a message whose shape surprises the parser is still kept, whole, as unparsed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from schemas.signing import PRODUCER_HEADER
from worker.adapters.ledger.dead_letters import NewDeadLetter
from worker.transport.attempts import PROCESS_TASK
from worker.transport.publisher import (
    DEAD_LETTER_ID_HEADER,
    DEAD_LETTERED_AT_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    STAGE_HEADER,
)

STAGES: Final = frozenset({"intake", "task"})  # what the worker writes; else "broker"
# Changes at each redelivery (RabbitMQ 4.x): not part of what a message is.
DELIVERY_COUNT_HEADER: Final = "x-delivery-count"
_OWN_ID = re.compile(r"[0-9a-f]{32}")
_REASON_LIMIT: Final = 2000
_KNOWN_PARSE_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, AttributeError)


def dead_letter_row(
    body: bytes | str,
    headers: dict[str, Any] | None,
    *,
    routing_key: str,
    content_type: str | None,
    producer_of: Callable[[str], str | None],
    now: datetime,
) -> NewDeadLetter:
    """The row that keeps this message. Never raises on what the message holds: a message
    it cannot read is kept as it came, stage `broker`, its reason saying so."""
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "backslashreplace")
    given = headers if isinstance(headers, dict) else {}
    try:
        return _parsed(
            raw,
            given,
            routing_key=routing_key,
            content_type=content_type,
            producer_of=producer_of,
            now=now,
        )
    except (*_KNOWN_PARSE_ERRORS, RecursionError) as exc:
        return NewDeadLetter(
            dedupe_key=dedupe_key(raw, given),
            dead_lettered_at=now,
            request_id=None,
            producer=None,
            stage="broker",
            reason=_text(f"kept unparsed: its headers or body could not be read ({exc!r})"),
            routing_key=_text(routing_key, 255),
            content_type=_text(content_type, 255) if content_type else None,
            body=raw,
            headers=json_safe(given),
        )


def _parsed(
    body: bytes,
    headers: dict[str, Any],
    *,
    routing_key: str,
    content_type: str | None,
    producer_of: Callable[[str], str | None],
    now: datetime,
) -> NewDeadLetter:
    request_id = _bounded(request_id_of(body, headers), 128)
    _, carried = original_message(body, headers)
    producer = _bounded(carried.get(PRODUCER_HEADER), 64)
    if producer is None and request_id is not None:
        producer = producer_of(request_id)
    stage = headers.get(STAGE_HEADER)
    return NewDeadLetter(
        dedupe_key=dedupe_key(body, headers),
        dead_lettered_at=dead_lettered_at(headers) or now,
        request_id=request_id,
        producer=producer,
        stage=stage if isinstance(stage, str) and stage in STAGES else "broker",
        reason=_text(reason_of(headers), _REASON_LIMIT),
        routing_key=_text(routing_key, 255),
        content_type=_text(content_type, 255) if content_type else None,
        body=body,
        headers=json_safe(headers),
    )


def dedupe_key(body: bytes, headers: dict[str, Any]) -> str:
    """The worker's own dead-letter id; for any other message, a hash of its body and its
    headers but the delivery count."""
    own = headers.get(DEAD_LETTER_ID_HEADER)
    if isinstance(own, str) and _OWN_ID.fullmatch(own):
        return own
    rest = {k: v for k, v in headers.items() if k != DELIVERY_COUNT_HEADER}
    digest = hashlib.sha256(body)
    digest.update(json.dumps(rest, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def dead_lettered_at(headers: dict[str, Any]) -> datetime | None:
    """The worker's stamp, else when RabbitMQ first dead-lettered it (None: neither)."""
    stamped = headers.get(DEAD_LETTERED_AT_HEADER)
    if isinstance(stamped, str | int | float):
        seconds = _seconds(stamped)
        if seconds is not None:
            return datetime.fromtimestamp(seconds, UTC)
    died = _first_death(headers).get("time")
    if isinstance(died, datetime):  # py-amqp gives naive UTC
        return died.replace(tzinfo=UTC) if died.tzinfo is None else died.astimezone(UTC)
    return None


def reason_of(headers: dict[str, Any]) -> str:
    given = headers.get(REASON_HEADER)
    if isinstance(given, str) and given:
        return given
    death = _first_death(headers)
    if death:
        return f"dead-lettered by RabbitMQ ({death.get('reason')}) from {death.get('queue')}"
    return "no reason given (neither an x-debit-worker-reason nor an x-death header)"


def request_id_of(body: bytes, headers: dict[str, Any]) -> str | None:
    """The request the worker named, else the one a task or a bare command names."""
    named = headers.get(REQUEST_ID_HEADER)
    if isinstance(named, str):
        return named
    resumed = resumed_request(body, headers)
    if resumed is not None:
        return resumed
    command, _ = original_message(body, headers)
    try:
        parsed = json.loads(command)
    except ValueError:  # not JSON, not UTF-8
        return None
    found = parsed.get("request_id") if isinstance(parsed, dict) else None
    return found if isinstance(found, str) else None


def resumed_request(body: bytes, headers: dict[str, Any]) -> str | None:
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
    return command.encode(), carried


def json_safe(value: Any) -> Any:
    """`value` as JSON both databases store: containers kept, times in ISO 8601, text made
    storable, anything else by its str()."""
    if isinstance(value, dict):
        return {_text(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return _text(value if isinstance(value, str) else str(value))


def _text(value: str | None, limit: int | None = None) -> str:
    """Storable text: no NUL (PostgreSQL refuses it) and no lone surrogate (not UTF-8)."""
    clean = (value or "").replace("\x00", "\ufffd").encode("utf-8", "backslashreplace").decode()
    return clean if limit is None else clean[:limit]


def _bounded(value: Any, limit: int) -> str | None:
    """A short non-empty text as it is, else None (an id cut short would name another)."""
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    clean = _text(value)
    return clean if clean == value else None


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return {}


def _seconds(stamped: str | float) -> float | None:
    try:
        seconds = float(stamped)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and 0 <= seconds < 2**33 else None
