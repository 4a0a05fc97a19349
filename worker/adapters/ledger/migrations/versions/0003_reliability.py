"""Reliability: when each request's idempotency key was first sent to Stripe.

Stripe keeps idempotency keys for 24 h; `first_attempt_at` lets the worker stop retrying
(and escalate) before the key expires. Rows already attempting get their `received_at`, an
earlier time, so they are escalated no later than they should be.

Revision ID: 0003_reliability
Revises: 0002_producers
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.adapters.ledger.tables import UTCDateTime

revision = "0003_reliability"
down_revision = "0002_producers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("debit_requests", sa.Column("first_attempt_at", UTCDateTime, nullable=True))
    op.execute(
        "UPDATE debit_requests SET first_attempt_at = received_at "
        "WHERE idempotency_key IS NOT NULL AND first_attempt_at IS NULL"
    )
    op.create_index("ix_debit_requests_lease_until", "debit_requests", ["lease_until"])


def downgrade() -> None:
    op.drop_index("ix_debit_requests_lease_until", "debit_requests")
    with op.batch_alter_table("debit_requests") as batch:
        batch.drop_column("first_attempt_at")
