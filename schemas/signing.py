"""Producer signatures: how a producer signs a DebitRequested, in any language.

The body is left exactly as it is; the signature travels in four AMQP headers. The signed
text (the *canonical form*) is five lines joined by a single LF, with no trailing newline,
encoded as UTF-8::

    debit-worker-signature-v1
    <producer id>
    <key id>
    <timestamp: Unix seconds, decimal ASCII>
    <SHA-256 of the exact body bytes, lower-case hex>

The signature is HMAC-SHA256 of that text under the key's secret (its UTF-8 bytes), as
lower-case hex, sent as ``v1=<hex>``. docs/contract.md has a test vector. Producer and key
ids are 1-64 characters of ``A-Z a-z 0-9 . _ -``, so no id can carry a line break into the
text.

An operator replaying a dead letter (``debit-worker dlq replay``) leaves the body and its
producer's four headers as they were, and vouches for the moment the worker first received
it with five more headers, signed the same way over a seven-line text::

    debit-worker-replay-v1
    <operator id>
    <operator key id>
    <timestamp of the replay: Unix seconds>
    <the original receipt time, as sent in x-debit-replay-received-at>
    <the producer's x-debit-signature value, or empty when it had none>
    <SHA-256 of the exact body bytes, lower-case hex>
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from typing import Final

SIGNATURE_VERSION: Final = "v1"
CANONICAL_PREFIX: Final = "debit-worker-signature-v1"

PRODUCER_HEADER: Final = "x-debit-producer"
KEY_ID_HEADER: Final = "x-debit-key-id"
TIMESTAMP_HEADER: Final = "x-debit-timestamp"
SIGNATURE_HEADER: Final = "x-debit-signature"
SIGNATURE_HEADERS: Final = (PRODUCER_HEADER, KEY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)

REPLAY_PREFIX: Final = "debit-worker-replay-v1"
REPLAY_BY_HEADER: Final = "x-debit-replay-by"
REPLAY_KEY_ID_HEADER: Final = "x-debit-replay-key-id"
REPLAY_TIMESTAMP_HEADER: Final = "x-debit-replay-timestamp"
REPLAY_RECEIVED_AT_HEADER: Final = "x-debit-replay-received-at"
REPLAY_SIGNATURE_HEADER: Final = "x-debit-replay-signature"
REPLAY_HEADERS: Final = (
    REPLAY_BY_HEADER,
    REPLAY_KEY_ID_HEADER,
    REPLAY_TIMESTAMP_HEADER,
    REPLAY_RECEIVED_AT_HEADER,
    REPLAY_SIGNATURE_HEADER,
)

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def valid_id(value: str) -> bool:
    """A producer or key id that the signed text cannot misread."""
    return _ID.fullmatch(value) is not None


def _checked(*ids: str) -> None:
    for value in ids:
        if not valid_id(value):
            raise ValueError(f"{value!r} is not a valid id: 1-64 of A-Z a-z 0-9 . _ -")


def canonical_form(producer: str, key_id: str, timestamp: int, body: bytes) -> bytes:
    """The exact bytes that are signed. Raises ValueError for an id outside valid_id."""
    _checked(producer, key_id)
    lines = (
        CANONICAL_PREFIX,
        producer,
        key_id,
        str(int(timestamp)),
        hashlib.sha256(body).hexdigest(),
    )
    return "\n".join(lines).encode("utf-8")


def signature(secret: str, producer: str, key_id: str, timestamp: int, body: bytes) -> str:
    """The value of the x-debit-signature header: ``v1=`` and the HMAC in lower-case hex."""
    return replay_signature(secret, canonical_form(producer, key_id, timestamp, body))


def replay_form(
    operator: str,
    key_id: str,
    timestamp: int,
    *,
    received_at: str,
    original_signature: str,
    body: bytes,
) -> bytes:
    """The exact bytes an operator signs to replay `body` (see the module's docstring)."""
    _checked(operator, key_id)
    lines = (
        REPLAY_PREFIX,
        operator,
        key_id,
        str(int(timestamp)),
        received_at,
        original_signature,
        hashlib.sha256(body).hexdigest(),
    )
    return "\n".join(lines).encode("utf-8")


def replay_signature(secret: str, form: bytes) -> str:
    """``v1=`` and the HMAC of a signed text (either form) under `secret`, in lower-case hex."""
    mac = hmac.new(secret.encode("utf-8"), form, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


@dataclass(frozen=True)
class Signer:
    """One producer key: signs bodies with the current time (or the `timestamp` given)."""

    producer: str
    key_id: str
    secret: str = field(repr=False)

    def headers_for(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The four headers to publish `body` with. Every value is an AMQP long string."""
        when = int(time.time()) if timestamp is None else int(timestamp)
        return {
            PRODUCER_HEADER: self.producer,
            KEY_ID_HEADER: self.key_id,
            TIMESTAMP_HEADER: str(when),
            SIGNATURE_HEADER: signature(self.secret, self.producer, self.key_id, when, body),
        }

    def replay_headers_for(
        self,
        body: bytes,
        *,
        received_at: str,
        original_signature: str,
        timestamp: int | None = None,
    ) -> dict[str, str]:
        """The five headers that vouch, as this operator, for a dead letter's replay."""
        when = int(time.time()) if timestamp is None else timestamp
        form = replay_form(
            self.producer,
            self.key_id,
            when,
            received_at=received_at,
            original_signature=original_signature,
            body=body,
        )
        return {
            REPLAY_BY_HEADER: self.producer,
            REPLAY_KEY_ID_HEADER: self.key_id,
            REPLAY_TIMESTAMP_HEADER: str(when),
            REPLAY_RECEIVED_AT_HEADER: received_at,
            REPLAY_SIGNATURE_HEADER: replay_signature(self.secret, form),
        }
