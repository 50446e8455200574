"""Audit jobs claimed with leases: the jobs table, the lease rows, and a run's attempt and progress.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE = ("queued", "running")


def upgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer))  # NULL: a run from before jobs, tried once
        batch.add_column(sa.Column("progress_done", sa.Integer))
        batch.add_column(sa.Column("progress_total", sa.Integer))
        batch.add_column(sa.Column("progress_eta_seconds", sa.Float))
        batch.add_column(sa.Column("progress_at", sa.Float))
    active = sa.column("status").in_(ACTIVE)
    op.create_table(
        "audit_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("audit_runs.id", ondelete="CASCADE"), nullable=False, unique=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),  # queued | running | done
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("available_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(300)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    # The one guarantee that a job is never queued twice: whichever process inserts second fails.
    op.create_index(
        "uq_audit_jobs_active_key", "audit_jobs", ["key"], unique=True,
        postgresql_where=active, sqlite_where=active,
    )
    op.create_index("ix_audit_jobs_claim", "audit_jobs", ["status", "priority", "id"])
    op.create_index("ix_audit_jobs_key", "audit_jobs", ["key"])
    op.create_table(
        "audit_leases",  # named leases: "scheduler" is held by the one worker that enqueues on schedule
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_leases")
    op.drop_table("audit_jobs")
    with op.batch_alter_table("audit_runs") as batch:
        for name in ("progress_at", "progress_eta_seconds", "progress_total", "progress_done", "attempt"):
            batch.drop_column(name)
