"""Per-producer daily limits: a lock row per (producer, currency) and one reservation per
request.

Revision ID: 0002_producers
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.adapters.ledger.tables import UTCDateTime

revision = "0002_producers"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "producer_budgets",
        sa.Column("producer", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "producer_reservations",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("producer", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("reserved_at", UTCDateTime, nullable=False),
        sa.Column("released_at", UTCDateTime, nullable=True),
    )
    op.create_index(
        "ix_producer_reservations_window",
        "producer_reservations",
        ["producer", "currency", "reserved_at"],
    )


def downgrade() -> None:
    op.drop_table("producer_reservations")
    op.drop_table("producer_budgets")
