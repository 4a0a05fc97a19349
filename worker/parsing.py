"""From raw message bytes to a DebitRequested, or to a precise reason why not.

Two outcomes for bad input: a body with a usable ``request_id`` becomes a ``DebitFailed``
(``invalid_request``) the producer can correlate; anything else goes to the dead-letter
queue, because there is no one to tell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from schemas.commands import DebitRequested, RequestId
from schemas.events import FieldError

MAX_BODY_BYTES: Final = 64 * 1024
_request_id = TypeAdapter(RequestId)


class Undeliverable(Exception):
    """No request_id can be read: the message goes to the dead-letter queue."""


@dataclass(frozen=True, slots=True)
class InvalidCommand(Exception):
    """The body names a request but is not a valid DebitRequested."""

    request_id: str
    partial: dict[str, Any]
    field_errors: tuple[FieldError, ...]

    def __str__(self) -> str:
        return "; ".join(f"{e.field or '(body)'}: {e.message}" for e in self.field_errors)


def _decode(body: bytes | str) -> dict[str, Any]:
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise Undeliverable(f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Undeliverable(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Undeliverable(f"body is not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise Undeliverable("body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise Undeliverable(f"body is not usable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Undeliverable(f"body is a JSON {type(value).__name__}, not an object")
    return value


def screen(body: bytes | str) -> str:
    """The request_id of a message worth handing to a worker, or raise Undeliverable."""
    value = _decode(body)
    candidate = value.get("request_id")
    try:
        return _request_id.validate_python(candidate)
    except ValidationError:
        shown = repr(candidate)[:80]
        raise Undeliverable(f"request_id is missing or invalid: {shown}") from None


def parse_command(body: bytes | str) -> DebitRequested:
    """Raises Undeliverable or InvalidCommand; never anything else for any input."""
    value = _decode(body)
    request_id = screen(body)
    try:
        return DebitRequested.model_validate_json(body)
    except ValidationError as exc:
        errors = tuple(
            FieldError(field=".".join(str(p) for p in err["loc"]), message=err["msg"])
            for err in exc.errors(include_url=False)
        )
        partial = {
            key: value.get(key)
            for key in ("account", "amount", "currency", "reason", "refund")
            if _readable(key, value.get(key))
        }
        raise InvalidCommand(request_id, partial, errors) from None


def echo_fields(body: bytes | str) -> dict[str, Any]:
    """The command's fields a DebitFailed may echo back (those of the right type, short)."""
    value = _decode(body)
    return {key: value.get(key) for key in _ECHOED if _readable(key, value.get(key))}


_ECHOED: Final = ("account", "amount", "currency", "reason", "refund")


def _readable(key: str, item: object) -> bool:
    """Only echo fields back that fit the event's loose types (and are short)."""
    if key == "amount":
        return isinstance(item, int) and not isinstance(item, bool) and abs(item) < 10**15
    if not isinstance(item, str) or len(item) > 100:
        return False
    try:
        item.encode("utf-8")  # a lone surrogate from a \ud800 escape cannot be sent on
    except UnicodeEncodeError:
        return False
    return True
