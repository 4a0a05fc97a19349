"""Per-producer policy: the reasons a producer may use, and per currency its per-debit and
rolling-day maximums. The daily maximum is reserved in the ledger when a request moves to
``attempting`` (worker/adapters/ledger/producer_budgets.py); the rest is a pure check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.commands import DebitReason, DebitRequested
from worker.domain.money import format_amount
from worker.domain.types import DailyLimit


class ProducerPolicy(BaseModel):
    """One producer's entry in DEBIT_WORKER_PRODUCERS. Left out, a limit does not apply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_reasons: frozenset[DebitReason] | None = Field(
        default=None, description="Reasons this producer may use; unset: all of them."
    )
    max_per_debit: dict[str, int] | None = Field(
        default=None,
        description="Currency → largest single debit (minor units); a currency not listed "
        "is refused. Unset: no per-producer maximum.",
    )
    max_per_day: dict[str, int] | None = Field(
        default=None,
        description="Currency → most this producer may debit in any 24 hours (minor units); "
        "a currency not listed is refused. Unset: no daily maximum.",
    )
    retired_keys: frozenset[str] = Field(
        default=frozenset(), description="Key ids refused as retired (rotated out)."
    )
    may_replay: bool = Field(
        default=False,
        description="This identity's keys may sign operators' dead-letter replays "
        "(`debit-worker dlq replay`); a replayed command is still judged by its own "
        "producer's signature and policy.",
    )


def static_refusal(producer: str, policy: ProducerPolicy, command: DebitRequested) -> str | None:
    """Why this producer may not send this command at all (reason, per-debit maximum)."""
    if policy.allowed_reasons is not None and command.reason not in policy.allowed_reasons:
        allowed = ", ".join(sorted(policy.allowed_reasons)) or "none"
        return f"producer {producer} may not use reason {command.reason} (allowed: {allowed})"
    if policy.max_per_debit is not None:
        cap = policy.max_per_debit.get(command.currency)
        if cap is None:
            return f"producer {producer} has no per-debit maximum for {command.currency.upper()}"
        if command.amount > cap:
            return (
                f"{format_amount(command.amount, command.currency)} is above producer "
                f"{producer}'s per-debit maximum of {format_amount(cap, command.currency)}"
            )
    if policy.max_per_day is not None and command.currency not in policy.max_per_day:
        return f"producer {producer} has no daily maximum for {command.currency.upper()}"
    return None


def daily_limit(producer: str, policy: ProducerPolicy, currency: str) -> DailyLimit | None:
    if policy.max_per_day is None:
        return None
    return DailyLimit(producer, currency, policy.max_per_day[currency])
