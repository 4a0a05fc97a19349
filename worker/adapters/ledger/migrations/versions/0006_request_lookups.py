"""Operators' lookups of requests: by account, and the newest first.

`debit-worker requests list --account` reads one account's requests newest first, and every
other listing reads the newest requests first: without these indexes each scanned and sorted
the whole table. Both columns are written once, at the claim, and never updated. On
PostgreSQL the indexes are built inside the migration's transaction, which holds writes to
debit_requests meanwhile (seconds per million rows): migrate before the workers start.

Revision ID: 0006_request_lookups
Revises: 0005_reconciliation
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006_request_lookups"
down_revision = "0005_reconciliation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_debit_requests_account_received", "debit_requests", ["account", "received_at"]
    )
    op.create_index("ix_debit_requests_received_at", "debit_requests", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_debit_requests_received_at", "debit_requests")
    op.drop_index("ix_debit_requests_account_received", "debit_requests")
