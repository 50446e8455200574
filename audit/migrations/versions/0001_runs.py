"""Any store the code before migrations wrote, or none, brought to that code's last schema.

Those versions created their tables on open and added later columns on open, so a database may hold
the first schema (tests/unit/audit_store_v1.sql), the last one, or nothing. This revision creates
what is missing, adds the columns added since the first schema (all nullable), and stores the
figures the runs written before them lack, derived once from their points and per-image outcomes.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from audit.results import DEGENERATE_SHARE, max_share, wilson_interval, worst_class

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The schema as it stood when migrations began: written out here, never imported from the store,
# so later changes to the store's tables cannot change what this revision does.
metadata = sa.MetaData()
sa.Table(
    "audit_sets", metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("dataset_fingerprint", sa.String(64), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("image_size", sa.Integer, nullable=False),
    sa.Column("sample_ids", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("class_names", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
runs = sa.Table(
    "audit_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("backbone", sa.String(100), nullable=False),
    sa.Column("attention", sa.Boolean, nullable=False),
    sa.Column("backend", sa.String(50), nullable=False),
    sa.Column("attack", sa.String(50), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("trigger", sa.String(50), nullable=False),
    sa.Column("owner", sa.String(300), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("audit_set", sa.String(64), sa.ForeignKey("audit_sets.fingerprint")),
    sa.Column("clean_accuracy", sa.Float),
    sa.Column("balanced_clean_accuracy", sa.Float),
    sa.Column("robustness_score", sa.Float),
    sa.Column("sanity_passed", sa.Boolean),
    sa.Column("artefacts", sa.Text),
    sa.Column("seed", sa.Integer),
    sa.Column("fooled_by", sa.JSON),
    sa.Column("audit_set_size", sa.Integer),
    sa.Column("predicted_class_max_share", sa.Float),
    sa.Column("degenerate", sa.Boolean),
)
points = sa.Table(
    "audit_points", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("audit_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("epsilon", sa.String(32), primary_key=True),
    sa.Column("epsilon_value", sa.Float, nullable=False),
    sa.Column("robust_accuracy", sa.Float, nullable=False),
    sa.Column("balanced_robust_accuracy", sa.Float, nullable=False),
    sa.Column("per_class", sa.JSON, nullable=False),
    sa.Column("attacked", sa.Integer, nullable=False),
    sa.Column("fooled", sa.Integer, nullable=False),
    sa.Column("noise_robust_accuracy", sa.Float),
    sa.Column("samples", sa.Integer),
    sa.Column("worst_class_robust_accuracy", sa.Float),
    sa.Column("robust_accuracy_lower", sa.Float),
    sa.Column("robust_accuracy_upper", sa.Float),
)
samples = sa.Table(
    "audit_samples", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("audit_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("sample_id", sa.String(500), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("clean_class", sa.Integer, nullable=False),
    sa.Column("fooled_at", sa.String(32)),
    sa.Column("adversarial_class", sa.Integer),
)
sa.Table(
    "audit_sanity", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("audit_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("check", sa.String(100), primary_key=True),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind, checkfirst=True)
    present = {t: {c["name"] for c in sa.inspect(bind).get_columns(t)} for t in metadata.tables}
    for table in metadata.sorted_tables:
        for column in table.columns:
            if column.name not in present[table.name]:
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
    _backfill(bind)


def _backfill(conn: sa.Connection) -> None:
    """The figures of runs written before their columns, derived from their points and samples.

    Such a run's robustness score was the mean over the whole grid: it is recomputed without epsilon 0.
    """
    for run in conn.execute(sa.select(runs).where(runs.c.status == "succeeded", runs.c.audit_set_size.is_(None))).all():
        counts = conn.execute(
            sa.select(sa.func.count()).select_from(samples).where(samples.c.run_id == run.id).group_by(samples.c.clean_class)
        ).scalars().all()
        share = max_share(counts)
        rows = conn.execute(sa.select(points).where(points.c.run_id == run.id)).all()
        attacked = [p.robust_accuracy for p in rows if p.epsilon_value > 0]
        n = sum(counts)
        conn.execute(runs.update().where(runs.c.id == run.id).values(
            audit_set_size=n, predicted_class_max_share=share, degenerate=share >= DEGENERATE_SHARE,
            robustness_score=sum(attacked) / len(attacked) if attacked else 0.0,
        ))
        for p in rows:
            size = p.samples if p.samples is not None else n
            missing = {"samples": size}
            if p.worst_class_robust_accuracy is None and p.per_class:
                missing["worst_class_robust_accuracy"] = worst_class(p.per_class)
            if p.robust_accuracy_lower is None and size:
                lower, upper = wilson_interval(round(p.robust_accuracy * size), size)
                missing |= {"robust_accuracy_lower": lower, "robust_accuracy_upper": upper}
            conn.execute(points.update().where(points.c.run_id == run.id, points.c.epsilon == p.epsilon).values(**missing))


def downgrade() -> None:
    raise NotImplementedError("the first revision is where migrations begin: there is nothing to go back to")
