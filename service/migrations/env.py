"""Alembic's environment: always given a connection by `service.schema.upgrade` (never a URL from an ini file)."""

from __future__ import annotations

from alembic import context

from service.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
