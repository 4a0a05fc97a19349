"""From a message to one typed, verified command, or a refusal: the only place raw bytes are
read. The intake admits each command once; everything after it (the handler, later attempts,
the janitor) works on the typed command or on the request id, never on bytes again.

- `Admitted`: a valid command and the producer whose signature was verified (None when
  signatures are optional and it came unsigned);
- `Refused`: the signature check failed (`unauthorized`); the command is parsed too, when it
  can be, so that a copy of a request already claimed can carry on under its claim;
- `Invalid`: a request id can be read but the command is not valid (`invalid_request`);
- `Undeliverable` (raised): no request id can be read; the message is a dead letter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.commands import DebitRequested
from worker.transport.authentication import Authenticator, Unauthorized, Verified
from worker.transport.parsing import InvalidCommand, echo_fields, parse_command


@dataclass(frozen=True, slots=True)
class Admitted:
    command: DebitRequested
    producer: Verified | None


@dataclass(frozen=True, slots=True)
class Refused:
    request_id: str
    refusal: Unauthorized
    command: DebitRequested | None  # None: not a valid command either
    echoed: dict[str, Any] = field(default_factory=dict)  # fields a DebitFailed may echo
    digest: str = ""  # of the exact bytes: tells one refused message from another


@dataclass(frozen=True, slots=True)
class Invalid:
    error: InvalidCommand


Admission = Admitted | Refused | Invalid


def admit(body: bytes, headers: Mapping[str, str], auth: Authenticator, now: datetime) -> Admission:
    """Raises Undeliverable (no request id); never anything else for any input. The
    signature is checked before validity is told: an unauthorised sender learns nothing
    about its command but the refusal."""
    parsed: DebitRequested | InvalidCommand
    try:
        parsed = parse_command(body)
    except InvalidCommand as invalid:
        parsed = invalid
    try:
        producer = auth.verify(body, headers, now)
    except Unauthorized as refused:
        command = parsed if isinstance(parsed, DebitRequested) else None
        digest = hashlib.sha256(body).hexdigest()[:32]
        return Refused(parsed.request_id, refused, command, echo_fields(body), digest)
    if isinstance(parsed, InvalidCommand):
        return Invalid(parsed)
    return Admitted(parsed, producer)
