"""Dead letters kept in the ledger.

Until now a dead letter lived only in the quorum queue `debits.dead-letter`, and listing it
meant taking it and giving it back: on RabbitMQ 4.x each give-back counts as a delivery, and
the queue's default delivery limit (20) drops the message. From this revision every worker
process (and each `dlq` command) moves what arrives in that queue into this table, where
listing it changes nothing; an operator's replay or discard resolves a row, audited. A
downgrade drops the table and the dead letters kept in it: list them first.

Revision ID: 0007_dead_letters
Revises: 0006_request_lookups
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.adapters.ledger.tables import UTCDateTime

revision = "0007_dead_letters"
down_revision = "0006_request_lookups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(80), nullable=False, unique=True),
        sa.Column("dead_lettered_at", UTCDateTime, nullable=False),
        sa.Column("kept_at", UTCDateTime, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("producer", sa.String(64), nullable=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("resolved_at", UTCDateTime, nullable=True),
        sa.Column("resolved_by", sa.String(200), nullable=True),
        sa.Column("resolution", sa.Text, nullable=True),
    )
    op.create_index("ix_dead_letters_request_id", "dead_letters", ["request_id"])
    op.create_index("ix_dead_letters_state_id", "dead_letters", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_state_id", "dead_letters")
    op.drop_index("ix_dead_letters_request_id", "dead_letters")
    op.drop_table("dead_letters")
