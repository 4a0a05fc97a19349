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
lower-case hex, sent as ``v1=<hex>``. docs/contract.md has a test vector.
"""

from __future__ import annotations

import hashlib
import hmac
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


def canonical_form(producer: str, key_id: str, timestamp: int, body: bytes) -> bytes:
    """The exact bytes that are signed."""
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
    mac = hmac.new(
        secret.encode("utf-8"), canonical_form(producer, key_id, timestamp, body), hashlib.sha256
    )
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def signed_headers(
    body: bytes, *, producer: str, key_id: str, secret: str, timestamp: int
) -> dict[str, str]:
    """The four headers to publish `body` with. Every value is an AMQP long string."""
    return {
        PRODUCER_HEADER: producer,
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: str(int(timestamp)),
        SIGNATURE_HEADER: signature(secret, producer, key_id, timestamp, body),
    }


@dataclass(frozen=True)
class Signer:
    """One producer key: signs bodies with the current time (or the `timestamp` given)."""

    producer: str
    key_id: str
    secret: str = field(repr=False)

    def headers_for(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        when = int(time.time()) if timestamp is None else timestamp
        return signed_headers(
            body, producer=self.producer, key_id=self.key_id, secret=self.secret, timestamp=when
        )
