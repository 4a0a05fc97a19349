"""Who sent a command: checks the producer's signature (schemas/signing.py) before anything
is claimed in the ledger or asked of Stripe.

The window is measured from the moment the intake received the command (the intake stamps
RECEIVED_AT_HEADER into the task), so retries of an accepted command are accepted again, and
an old command published again is refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from schemas.signing import (
    KEY_ID_HEADER,
    PRODUCER_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_HEADERS,
    TIMESTAMP_HEADER,
    signature,
)
from worker.producer_limits import ProducerPolicy

# Set by the intake (not by producers): when the worker took the command off its queue.
RECEIVED_AT_HEADER: Final = "x-debit-worker-received-at"
CARRIED_HEADERS: Final = (*SIGNATURE_HEADERS, RECEIVED_AT_HEADER)
_NO_POLICY: Final = ProducerPolicy()


class Unauthorized(Exception):
    """The command is refused; `reason` names no secret and is fit for the producer."""

    def __init__(self, reason: str, producer: str | None = None, key_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.producer = producer
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class Verified:
    producer: str
    key_id: str
    policy: ProducerPolicy


def carried_headers(headers: Mapping[str, object] | None) -> dict[str, str]:
    """The headers the intake hands on to the task: the signature's, as strings."""
    return {
        # Not UTF-8: carried replaced, so its signature fails (unauthorized), never a crash.
        name: value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        for name, value in (headers or {}).items()
        if name in CARRIED_HEADERS and isinstance(value, str | bytes | int)
    }


@dataclass(frozen=True)
class Authenticator:
    keys: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    policies: Mapping[str, ProducerPolicy] = field(default_factory=dict)
    require_signatures: bool = True
    max_age_seconds: float = 300.0

    def verify(self, body: bytes, headers: Mapping[str, str], now: datetime) -> Verified | None:
        """The verified producer; None for an unsigned command when signatures are optional.
        Raises Unauthorized."""
        producer = headers.get(PRODUCER_HEADER)
        given = headers.get(SIGNATURE_HEADER)
        if producer is None and given is None and not self.require_signatures:
            return None
        if not producer or not given:
            raise Unauthorized("the command is not signed (x-debit-producer/-signature missing)")
        key_id = headers.get(KEY_ID_HEADER) or ""
        policy = self.policies.get(producer, _NO_POLICY)
        if producer not in self.keys and producer not in self.policies:
            raise Unauthorized(f"unknown producer {producer!r}", producer, key_id)
        if key_id in policy.retired_keys:
            raise Unauthorized(f"key {key_id!r} of {producer} is retired", producer, key_id)
        secret = self.keys.get(producer, {}).get(key_id)
        if secret is None:
            raise Unauthorized(f"unknown key {key_id!r} for {producer}", producer, key_id)
        timestamp = _integer(headers.get(TIMESTAMP_HEADER))
        if timestamp is None:
            raise Unauthorized("x-debit-timestamp is missing or not whole seconds", producer)
        expected = signature(secret, producer, key_id, timestamp, body)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise Unauthorized("the signature does not match the command", producer, key_id)
        received = _number(headers.get(RECEIVED_AT_HEADER))
        at = received if received is not None else now.timestamp()
        if abs(at - timestamp) > self.max_age_seconds:
            raise Unauthorized(
                f"the signature's timestamp is {round(at - timestamp)} s from its receipt; "
                f"the window is {self.max_age_seconds:g} s",
                producer,
                key_id,
            )
        return Verified(producer, key_id, policy)


def _integer(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    return int(value)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
