"""The ledger's tables. Migrations (worker/adapters/ledger/migrations) create them; keep both
in step."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL and on SQLite (which keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored in the ledger")
        return value.astimezone(UTC)

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Status(StrEnum):
    RECEIVED = "received"  # claimed; the policy has not allowed it yet
    ATTEMPTING = "attempting"  # the policy allowed it; Stripe may be called from now on
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NEEDS_RECONCILIATION = "needs_reconciliation"  # outcome unknown after every attempt


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED})

metadata = MetaData()

debit_requests = Table(
    "debit_requests",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("account", String(80), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("refund", String(80), nullable=True),
    Column("command", JSON, nullable=False),
    Column("status", String(32), nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("payment_id", String(80), nullable=True),
    Column("transfer_id", String(80), nullable=True),
    Column("balance_transaction", String(80), nullable=True),
    Column("failure_code", String(64), nullable=True),
    Column("failure_message", Text, nullable=True),
    Column("stripe_error", JSON, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    # When the idempotency key was first sent to Stripe: Stripe keeps keys 24 h, so this
    # bounds how long the request may be retried.
    Column("first_attempt_at", UTCDateTime, nullable=True),
    # The producer whose signature was verified when the request was claimed: its policy
    # applies whenever the request is decided, whoever resumes it.
    Column("producer", String(64), nullable=True),
    # The Stripe charge's `created` time, written with a success: the day it counts in when
    # the books are closed (reconciliation.py reads a day by it).
    Column("charged_at", UTCDateTime, nullable=True),
    Index("ix_debit_requests_status", "status"),
    Index("ix_debit_requests_refund", "refund"),
    Index("ix_debit_requests_lease_until", "lease_until"),
    Index("ix_debit_requests_charged_at", "charged_at"),
    Index("ix_debit_requests_account_received", "account", "received_at"),
    Index("ix_debit_requests_received_at", "received_at"),
)

# What has been reserved against each refund by recoveries in flight or succeeded. The
# conditional UPDATE on this row is what makes over-recovery impossible under concurrency.
refund_budgets = Table(
    "refund_budgets",
    metadata,
    Column("refund_id", String(80), primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("refunded_amount", BigInteger, nullable=False),
    Column("reserved_amount", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("request_id", String(128), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("routing_key", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("publish_attempts", Integer, nullable=False, default=0),
    Index("ix_outbox_unsent", "sent_at", "id"),
    Index("ix_outbox_request", "request_id"),
)

consents = Table(
    "consents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(80), nullable=False),
    Column("agreement_ref", String(500), nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
    Column("granted_by", String(200), nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revoked_by", String(200), nullable=True),
    Index("ix_consents_account", "account"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("entity", String(32), nullable=False),  # "request" | "consent"
    Column("entity_id", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_audit_entity", "entity", "entity_id"),
)

# Per-producer daily limits. One lock row per (producer, currency), locked at the start of
# each reservation so one producer's reservations queue up; one reservation row per request,
# so a redelivered request never counts twice. A failed debit's reservation is released.
producer_budgets = Table(
    "producer_budgets",
    metadata,
    Column("producer", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

producer_reservations = Table(
    "producer_reservations",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("producer", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reserved_at", UTCDateTime, nullable=False),
    Column("released_at", UTCDateTime, nullable=True),
    Index("ix_producer_reservations_window", "producer", "currency", "reserved_at"),
)

# How a request awaiting reconciliation was settled, written in the same transaction as the
# outcome it settles; one per request (a settled request is finished).
settlements = Table(
    "settlements",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("settled_at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),  # "reconciler", "operator:alice"
    Column("outcome", String(32), nullable=False),  # "succeeded" | "failed"
    Column("method", String(40), nullable=False),  # "resent", "stripe_records", "operator"
    Column("evidence", JSON, nullable=False),  # what was read, when, which ids
)

# One row per proof of a day (Stripe's charges against the ledger's debits). The counts are
# NULL while it runs.
reconciliation_runs = Table(
    "reconciliation_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("day", String(10), nullable=False),  # "YYYY-MM-DD", UTC
    Column("trigger", String(16), nullable=False),  # "schedule" | "cli"
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("status", String(16), nullable=False),  # "running" | "clean" | "differences" | "error"
    Column("stripe_charges", Integer, nullable=True),
    Column("ledger_debits", Integer, nullable=True),
    Column("matched", Integer, nullable=True),
    Column("differences", Integer, nullable=True),
    Column("unexplained", Integer, nullable=True),
    Column("list_requests", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_reconciliation_runs_day", "day"),
)

reconciliation_differences = Table(
    "reconciliation_differences",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("charge_id", String(80), nullable=True),
    Column("explained", Boolean, nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_reconciliation_differences_run", "run_id"),
)

# The schedule's lock: the first worker process (of all hosts) to insert a day proves it.
scheduled_proofs = Table(
    "scheduled_proofs",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("owner", String(200), nullable=False),
)

# Dead letters, kept here by the keeper (worker/ops/dead_letter_keeper.py) from the queue
# debits.dead-letter: listing them reads rows, so it never counts as a delivery. One row per
# message (dedupe_key: the worker's dead-letter id, else a hash of body and headers); an
# operator's replay or discard resolves it, audited.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(80), nullable=False, unique=True),
    Column("dead_lettered_at", UTCDateTime, nullable=False),
    Column("kept_at", UTCDateTime, nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("producer", String(64), nullable=True),
    Column("stage", String(16), nullable=False),  # "intake" | "task" | "broker"
    Column("reason", Text, nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("content_type", String(255), nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("state", String(16), nullable=False, default="pending", server_default="pending"),
    Column("resolved_at", UTCDateTime, nullable=True),
    Column("resolved_by", String(200), nullable=True),
    Column("resolution", Text, nullable=True),  # the discard reason, or "replayed"
    Index("ix_dead_letters_request_id", "request_id"),
    Index("ix_dead_letters_state_id", "state", "id"),
)
