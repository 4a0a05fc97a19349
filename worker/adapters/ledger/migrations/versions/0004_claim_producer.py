"""Who asked: the verified producer is stored on each request's claim.

A request can be resumed without its producer's headers (the janitor's re-enqueue, a
redelivery past the signature window, an unsigned copy of a claimed command); its producer's
policy still applies, read from here. Rows claimed before this revision keep NULL: no
producer was recorded for them.

Revision ID: 0004_claim_producer
Revises: 0003_reliability
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_claim_producer"
down_revision = "0003_reliability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("debit_requests", sa.Column("producer", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("debit_requests") as batch:
        batch.drop_column("producer")
