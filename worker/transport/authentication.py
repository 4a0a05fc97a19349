"""Who sent a command: checks the producer's signature (schemas/signing.py) before anything
is claimed in the ledger or asked of Stripe. The window is measured from the moment the intake
received the command (its own RECEIVED_AT_HEADER stamp), so an old command published again is
refused.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from schemas.signing import (
    KEY_ID_HEADER,
    PRODUCER_HEADER,
    REPLAY_BY_HEADER,
    REPLAY_HEADERS,
    REPLAY_KEY_ID_HEADER,
    REPLAY_RECEIVED_AT_HEADER,
    REPLAY_SIGNATURE_HEADER,
    REPLAY_TIMESTAMP_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_HEADERS,
    TIMESTAMP_HEADER,
    replay_form,
    replay_signature,
    signature,
    valid_id,
)
from worker.domain.producer_limits import ProducerPolicy

# Set by the intake (not by producers): when the worker took the command off its queue.
RECEIVED_AT_HEADER: Final = "x-debit-worker-received-at"
CARRIED_HEADERS: Final = (*SIGNATURE_HEADERS, *REPLAY_HEADERS, RECEIVED_AT_HEADER)
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

    def policy_of(self, producer: str) -> ProducerPolicy:
        return self.policies.get(producer, _NO_POLICY)

    def verify(self, body: bytes, headers: Mapping[str, str], now: datetime) -> Verified | None:
        """The verified producer; None for an unsigned command when signatures are optional.
        Raises Unauthorized."""
        received = _receipt(headers.get(RECEIVED_AT_HEADER), now)
        if any(name in headers for name in REPLAY_HEADERS):
            return self._verify_replay(body, headers, received)
        if (
            headers.get(PRODUCER_HEADER) is None
            and headers.get(SIGNATURE_HEADER) is None
            and not self.require_signatures
        ):
            return None
        return self._verify_signed(body, headers, received)

    def _verify_signed(self, body: bytes, headers: Mapping[str, str], received: float) -> Verified:
        producer = headers.get(PRODUCER_HEADER)
        given = headers.get(SIGNATURE_HEADER)
        if not producer or not given:
            raise Unauthorized("the command is not signed (x-debit-producer/-signature missing)")
        key_id = headers.get(KEY_ID_HEADER) or ""
        timestamp = self._check_key(producer, key_id, headers, TIMESTAMP_HEADER)
        secret = self.keys[producer][key_id]
        expected = signature(secret, producer, key_id, timestamp, body)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise Unauthorized("the signature does not match the command", producer, key_id)
        self._check_age(received, timestamp, producer, key_id)
        return Verified(producer, key_id, self.policy_of(producer))

    def _verify_replay(self, body: bytes, headers: Mapping[str, str], received: float) -> Verified:
        """An operator's replay of a dead letter: the operator vouches for when the worker
        first received it; the command itself must still carry its producer's valid
        signature, judged at that moment, and is decided under that producer's policy. An
        unsigned dead letter stays unsigned: no operator can make it move money."""
        operator = headers.get(REPLAY_BY_HEADER) or ""
        key_id = headers.get(REPLAY_KEY_ID_HEADER) or ""
        given = headers.get(REPLAY_SIGNATURE_HEADER) or ""
        first_received = headers.get(REPLAY_RECEIVED_AT_HEADER) or ""
        if not self.policy_of(operator).may_replay:
            raise Unauthorized(
                f"{operator!r} may not replay commands (may_replay in its producer policy)",
                operator,
                key_id,
            )
        timestamp = self._check_key(operator, key_id, headers, REPLAY_TIMESTAMP_HEADER)
        original = headers.get(SIGNATURE_HEADER) or ""
        form = replay_form(
            operator,
            key_id,
            timestamp,
            received_at=first_received,
            original_signature=original,
            body=body,
        )
        expected = replay_signature(self.keys[operator][key_id], form)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise Unauthorized("the replay signature does not match", operator, key_id)
        self._check_age(received, timestamp, operator, key_id)
        if not original:
            raise Unauthorized(
                "the replayed command was never signed by its producer; a replay cannot "
                "make an unsigned command move money",
                operator,
                key_id,
            )
        at = _receipt(first_received, None)
        return self._verify_signed(body, headers, at)

    def _check_key(
        self, producer: str, key_id: str, headers: Mapping[str, str], timestamp_header: str
    ) -> int:
        """The signing key exists and may sign; returns the signature's timestamp."""
        if not valid_id(producer):
            raise Unauthorized("the producer id is not 1-64 of A-Z a-z 0-9 . _ -")
        if producer not in self.keys and producer not in self.policies:
            raise Unauthorized(f"unknown producer {producer!r}", producer)
        if not valid_id(key_id):
            raise Unauthorized(
                f"the key id of {producer} is missing or not 1-64 of A-Z a-z 0-9 . _ -", producer
            )
        if key_id in self.policy_of(producer).retired_keys:
            raise Unauthorized(f"key {key_id!r} of {producer} is retired", producer, key_id)
        if key_id not in self.keys.get(producer, {}):
            raise Unauthorized(f"unknown key {key_id!r} for {producer}", producer, key_id)
        whole = _integer(headers.get(timestamp_header))
        if whole is None:
            raise Unauthorized(f"{timestamp_header} is missing or not whole seconds", producer)
        return whole

    def _check_age(self, received: float, timestamp: int, producer: str, key_id: str) -> None:
        if abs(received - timestamp) > self.max_age_seconds:
            raise Unauthorized(
                f"the signature's timestamp is {round(received - timestamp)} s from its "
                f"receipt; the window is {self.max_age_seconds:g} s",
                producer,
                key_id,
            )


def _receipt(value: str | None, now: datetime | None) -> float:
    """When the intake received the command (its header), else now. A value that is not a
    finite number is refused: it would compare as inside any window."""
    if value is None and now is not None:
        return now.timestamp()
    try:
        at = float(value) if value is not None else math.nan
    except ValueError:
        at = math.nan
    if not math.isfinite(at):
        raise Unauthorized(f"the receipt time {str(value)[:40]!r} is not a finite number")
    return at


def _integer(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    return int(value)
