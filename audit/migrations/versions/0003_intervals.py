"""Intervals on every figure, and `degenerate` on class-balanced prediction shares.

Adds, per point, the per-class counts, each class's Wilson interval, the worst class and its
interval, and balanced robust accuracy's bootstrap interval; per run, the intervals of clean and
balanced clean accuracy and the class-balanced share of the most-predicted class. Runs written
before are recounted from their stored per-image outcomes: a point whose recount does not give its
stored per-class figures keeps NULL intervals (nothing is made up), and every run with outcomes has
its `degenerate` flag judged again by the class-balanced rule (audit/results.py DEGENERATE_SHARE).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import logging
import math
from typing import Any

import sqlalchemy as sa
from alembic import op

from audit.results import (
    DEGENERATE_SHARE,
    EpsilonPoint,
    SampleOutcome,
    balanced_max_share,
    bootstrap_balanced_interval,
    class_counts,
    standing,
    wilson_interval,
)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

RUN_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("balanced_predicted_class_max_share", sa.Float), ("clean_accuracy_lower", sa.Float), ("clean_accuracy_upper", sa.Float),
    ("balanced_clean_accuracy_lower", sa.Float), ("balanced_clean_accuracy_upper", sa.Float),
)
POINT_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("class_counts", sa.JSON), ("class_intervals", sa.JSON), ("worst_class", sa.String(200)),
    ("worst_class_robust_accuracy_lower", sa.Float), ("worst_class_robust_accuracy_upper", sa.Float),
    ("balanced_robust_accuracy_lower", sa.Float), ("balanced_robust_accuracy_upper", sa.Float),
)

# The tables as this revision reads and writes them: written out here, never imported from the store.
metadata = sa.MetaData()
sets = sa.Table(
    "audit_sets", metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("class_names", sa.JSON, nullable=False),
)
runs = sa.Table(
    "audit_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("audit_set", sa.String(64)),
    sa.Column("degenerate", sa.Boolean),
    *(sa.Column(name, kind) for name, kind in RUN_COLUMNS),
)
points = sa.Table(
    "audit_points", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("epsilon", sa.String(32), primary_key=True),
    sa.Column("per_class", sa.JSON, nullable=False),
    *(sa.Column(name, kind) for name, kind in POINT_COLUMNS),
)
samples = sa.Table(
    "audit_samples", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("sample_id", sa.String(500), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("clean_class", sa.Integer, nullable=False),
    sa.Column("fooled_at", sa.String(32)),
    sa.Column("adversarial_class", sa.Integer),
)


def upgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch:
        for name, kind in RUN_COLUMNS:
            batch.add_column(sa.Column(name, kind))
    with op.batch_alter_table("audit_points") as batch:
        for name, kind in POINT_COLUMNS:
            batch.add_column(sa.Column(name, kind))
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    """The new figures of every succeeded run, recounted from its per-image outcomes."""
    for run in conn.execute(sa.select(runs).where(runs.c.status == "succeeded", runs.c.audit_set.is_not(None))).all():
        names = conn.execute(sa.select(sets.c.class_names).where(sets.c.fingerprint == run.audit_set)).scalar()
        outcomes = tuple(
            SampleOutcome(r.sample_id, r.label, r.clean_class, r.fooled_at, r.adversarial_class)
            for r in conn.execute(sa.select(samples).where(samples.c.run_id == run.id)).all()
        )
        if not outcomes or not names:
            continue
        labels = [s.label for s in outcomes]
        share, _ = balanced_max_share(labels, [s.clean_class for s in outcomes])
        clean = class_counts([s.clean_class == s.label for s in outcomes], labels, names)
        clean_lower, clean_upper = wilson_interval(sum(k for k, _ in clean.values()), sum(n for _, n in clean.values()))
        balanced_lower, balanced_upper = bootstrap_balanced_interval(clean)
        conn.execute(runs.update().where(runs.c.id == run.id).values(
            balanced_predicted_class_max_share=share, degenerate=share >= DEGENERATE_SHARE,
            clean_accuracy_lower=clean_lower, clean_accuracy_upper=clean_upper,
            balanced_clean_accuracy_lower=balanced_lower, balanced_clean_accuracy_upper=balanced_upper,
        ))
        for p in conn.execute(sa.select(points).where(points.c.run_id == run.id)).all():
            counts = class_counts(standing(outcomes, p.epsilon), labels, names)
            stored = p.per_class or {}
            if set(counts) != set(stored) or any(not math.isclose(k / n, stored[c], abs_tol=1e-9) for c, (k, n) in counts.items()):
                log.warning("run %s at %s: its outcomes recount to %s, not its stored %s: no interval", run.id, p.epsilon,
                            counts, stored)
                continue
            point = EpsilonPoint(p.epsilon, 0.0, 0.0, stored, 0, 0, class_counts=counts)
            conn.execute(points.update().where(points.c.run_id == run.id, points.c.epsilon == p.epsilon).values(
                **point.intervals()
            ))


def downgrade() -> None:
    with op.batch_alter_table("audit_points") as batch:
        for name, _ in reversed(POINT_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("audit_runs") as batch:
        for name, _ in reversed(RUN_COLUMNS):
            batch.drop_column(name)
