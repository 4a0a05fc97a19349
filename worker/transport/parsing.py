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


@dataclass(frozen=True, slots=True)
class _Decoded:
    value: dict[str, Any]
    # Names that appear twice in one JSON object: parsers disagree on which one counts, so
    # such a body never means one thing (the signature covers bytes, not a reading of them).
    repeated: frozenset[str]
    request_id_repeated: bool


def _decode(body: bytes | str) -> _Decoded:
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise Undeliverable(f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Undeliverable(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    repeated: list[set[str]] = []  # per object, innermost first: the body itself is last

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in items]
        repeated.append({name for name in names if names.count(name) > 1})
        return dict(items)

    try:
        value = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise Undeliverable(f"body is not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise Undeliverable("body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise Undeliverable(f"body is not usable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Undeliverable(f"body is a JSON {type(value).__name__}, not an object")
    return _Decoded(
        value,
        frozenset().union(*repeated),
        "request_id" in repeated[-1],
    )


def screen(body: bytes | str) -> str:
    """The request_id of a message worth handing to a worker, or raise Undeliverable."""
    return _screened(_decode(body))


def _screened(decoded: _Decoded) -> str:
    if decoded.request_id_repeated:
        raise Undeliverable("request_id appears more than once: no one request can be named")
    candidate = decoded.value.get("request_id")
    try:
        return _request_id.validate_python(candidate)
    except ValidationError:
        shown = repr(candidate)[:80]
        raise Undeliverable(f"request_id is missing or invalid: {shown}") from None


def parse_command(body: bytes | str) -> DebitRequested:
    """Raises Undeliverable or InvalidCommand; never anything else for any input."""
    decoded = _decode(body)
    request_id = _screened(decoded)
    partial = _echoed(decoded.value)
    if decoded.repeated:
        errors = tuple(
            FieldError(field=name, message="appears more than once in a JSON object")
            for name in sorted(decoded.repeated)
        )
        raise InvalidCommand(request_id, partial, errors)
    try:
        return DebitRequested.model_validate_json(body)
    except ValidationError as exc:
        errors = tuple(
            FieldError(field=".".join(str(p) for p in err["loc"]), message=err["msg"])
            for err in exc.errors(include_url=False)
        )
        raise InvalidCommand(request_id, partial, errors) from None


def echo_fields(body: bytes | str) -> dict[str, Any]:
    """The command's fields a DebitFailed may echo back (those of the right type, short)."""
    return _echoed(_decode(body).value)


def _echoed(value: dict[str, Any]) -> dict[str, Any]:
    fields = ("account", "amount", "currency", "reason", "refund")
    return {key: value.get(key) for key in fields if _readable(key, value.get(key))}


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
