"""Idempotency keys the way Stripe keeps them.

A key lives in a scope (API key, Stripe-Account header). Its first request claims it; while
that runs, the same key gets 409 `idempotency_key_in_use`; once it finished, the same key
with the same parameters replays the stored status and body, with other parameters it gets
400 `idempotency_error`. Keys expire 24 h after first use on the sandbox clock. Outcomes that
Stripe does not store (validation errors, 429s, a connection dropped before any effect) are
released instead, so the key can be used afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.sandbox import errors
from worker.sandbox.clock import SandboxClock

KEY_TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255

Scope = tuple[str, str | None, str]  # (api key, Stripe-Account header, idempotency key)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Entry:
    fingerprint: str
    first_used: float
    response: StoredResponse | None = None  # None while the first request is running


class IdempotencyStore:
    def __init__(self, clock: SandboxClock) -> None:
        self._clock = clock
        self._entries: dict[Scope, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, scope: Scope, fingerprint: str) -> StoredResponse | None:
        """Claim the key (returns None), or return the response to replay, or refuse."""
        key = scope[2]
        if len(key) > MAX_KEY_LENGTH:
            raise errors.invalid(
                f"Idempotency keys can be at most {MAX_KEY_LENGTH} characters long.",
                param="Idempotency-Key",
            )
        entry = self._entries.get(scope)
        if entry is not None and self._clock.now() >= entry.first_used + KEY_TTL_SECONDS:
            del self._entries[scope]
            entry = None
        if entry is None:
            self._entries[scope] = _Entry(fingerprint, self._clock.now())
            return None
        if entry.fingerprint != fingerprint:
            raise errors.idempotency_mismatch(key)
        if entry.response is None:
            raise errors.idempotency_key_in_use(key)
        return entry.response

    def complete(self, scope: Scope, response: StoredResponse) -> None:
        entry = self._entries.get(scope)
        if entry is not None and entry.response is None:
            entry.response = response

    def release(self, scope: Scope) -> None:
        """Forget a claim whose outcome Stripe would not store."""
        entry = self._entries.get(scope)
        if entry is not None and entry.response is None:
            del self._entries[scope]
