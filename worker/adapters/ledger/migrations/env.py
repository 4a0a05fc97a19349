"""Alembic environment: runs with the connection handed over by worker.adapters.ledger.migrate."""

from __future__ import annotations

from alembic import context

from worker.adapters.ledger.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
