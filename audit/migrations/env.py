"""Alembic's environment for the audit store: always handed a live connection by `audit.migrate`
(programmatic configuration: no alembic.ini, no URL read here)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# SQLite alters tables by copying them ("batch" mode); render_as_batch lets one migration serve both.
context.configure(connection=connection, target_metadata=None, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
