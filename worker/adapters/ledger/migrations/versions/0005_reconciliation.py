"""Closing the books: when each charge was made, settlements, reconciliation runs and their
differences, and the schedule's lock.

`charged_at` is the Stripe charge's `created` time, written with each success from now on;
requests that succeeded before this revision keep NULL (no day's proof reads them by it).

Revision ID: 0005_reconciliation
Revises: 0004_claim_producer
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.adapters.ledger.tables import UTCDateTime

revision = "0005_reconciliation"
down_revision = "0004_claim_producer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("debit_requests", sa.Column("charged_at", UTCDateTime, nullable=True))
    op.create_index("ix_debit_requests_charged_at", "debit_requests", ["charged_at"])
    op.create_table(
        "settlements",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("settled_at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
    )
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stripe_charges", sa.Integer, nullable=True),
        sa.Column("ledger_debits", sa.Integer, nullable=True),
        sa.Column("matched", sa.Integer, nullable=True),
        sa.Column("differences", sa.Integer, nullable=True),
        sa.Column("unexplained", sa.Integer, nullable=True),
        sa.Column("list_requests", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_reconciliation_runs_day", "reconciliation_runs", ["day"])
    op.create_table(
        "reconciliation_differences",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("charge_id", sa.String(80), nullable=True),
        sa.Column("explained", sa.Boolean, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_reconciliation_differences_run", "reconciliation_differences", ["run_id"])
    op.create_table(
        "scheduled_proofs",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("claimed_at", UTCDateTime, nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "scheduled_proofs",
        "reconciliation_differences",
        "reconciliation_runs",
        "settlements",
    ):
        op.drop_table(table)
    op.drop_index("ix_debit_requests_charged_at", "debit_requests")
    with op.batch_alter_table("debit_requests") as batch:
        batch.drop_column("charged_at")
