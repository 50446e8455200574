"""The audit store's Alembic migrations, shipped with the package; `audit.migrate` runs them."""
