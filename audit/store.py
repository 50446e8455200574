"""The audit store: runs, per-epsilon points, per-sample outcomes and sanity checks, in SQL.

SQLite by default, any SQLAlchemy URL through `MEDROBUST_DATABASE_URL`. A run is written in two
steps: a 'running' row in its own transaction when it starts, then every figure together with the
final status in one transaction. A process killed in between leaves only that row, which the next
store to open marks failed, so readers never see a half-written run.

A database written by an earlier schema opens: columns added since are added on open (all
nullable), and filled for the runs written before them from what those runs stored (their points
and per-image outcomes); a run an older process finishes later is filled on read.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from audit.results import DEGENERATE_SHARE, AuditResult, AuditSet, max_share, wilson_interval, worst_class

log = logging.getLogger(__name__)

metadata = sa.MetaData()

audit_sets = sa.Table(
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

audit_runs = sa.Table(
    "audit_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("backbone", sa.String(100), nullable=False),
    sa.Column("attention", sa.Boolean, nullable=False),
    sa.Column("backend", sa.String(50), nullable=False),
    sa.Column("attack", sa.String(50), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),  # running | succeeded | failed
    sa.Column("trigger", sa.String(50), nullable=False, default="manual"),
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
    # Added by the "audit a user can believe" schema; NULL in runs written before it.
    sa.Column("seed", sa.Integer),  # the attack's seed
    sa.Column("fooled_by", sa.JSON),  # attack name -> images it fooled
    sa.Column("audit_set_size", sa.Integer),
    sa.Column("predicted_class_max_share", sa.Float),
    sa.Column("degenerate", sa.Boolean),
)

audit_points = sa.Table(
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
    sa.Column("robust_accuracy_lower", sa.Float),  # 95% Wilson score interval of robust_accuracy
    sa.Column("robust_accuracy_upper", sa.Float),
)

audit_samples = sa.Table(
    "audit_samples", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("audit_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("sample_id", sa.String(500), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("clean_class", sa.Integer, nullable=False),
    sa.Column("fooled_at", sa.String(32)),
    sa.Column("adversarial_class", sa.Integer),
)

audit_sanity = sa.Table(
    "audit_sanity", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("audit_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("check", sa.String(100), primary_key=True),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)

ACTIVE = ("running",)
STALE_FOREIGN_SECONDS = 6 * 3600  # a run owned by another host is presumed dead after this long


class RunNotFound(LookupError):
    """No run with that id."""


@dataclass(frozen=True)
class RunRecord:
    """One row of `audit_runs`, plus its points and checks when asked for in full."""

    id: int
    model: str
    version: int
    task: str
    backbone: str
    attention: bool
    backend: str
    attack: str
    status: str
    trigger: str
    started_at: float
    finished_at: float | None
    duration_seconds: float | None
    error: str | None
    config: Mapping[str, Any]
    audit_set: str | None
    clean_accuracy: float | None
    balanced_clean_accuracy: float | None
    robustness_score: float | None
    sanity_passed: bool | None
    artefacts: str | None
    seed: int | None = None
    fooled_by: Mapping[str, int] = field(default_factory=dict)
    audit_set_size: int | None = None
    predicted_class_max_share: float | None = None
    degenerate: bool | None = None
    points: tuple[Mapping[str, Any], ...] = ()
    sanity: tuple[Mapping[str, Any], ...] = ()

    @property
    def steps(self) -> Any:
        return self.config.get("steps")

    @property
    def epsilons(self) -> tuple[str, ...]:
        return tuple(p["epsilon"] for p in self.points)

    def to_json(self) -> dict[str, Any]:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__}
        doc["config"] = dict(self.config)
        doc["fooled_by"] = dict(self.fooled_by)
        doc["points"] = [dict(p) for p in self.points]
        doc["sanity"] = [dict(s) for s in self.sanity]
        return doc


def comparable(a: RunRecord, b: RunRecord) -> bool:
    """Two runs whose figures may be set side by side: same audit set, attack, steps and epsilon grid."""
    return (
        a.audit_set is not None and a.audit_set == b.audit_set and a.attack == b.attack and a.steps == b.steps
        and a.epsilons == b.epsilons
    )


@functools.cache
def _process_start() -> str:
    """A token drawn once per process start. A restarted container is PID 1 again, so a PID alone
    cannot tell this process from the one whose runs it finds `running` in the store."""
    return "s" + uuid.uuid4().hex[:12]  # never all digits: an older owner is `host:pid`


def owner_id() -> str:
    """`host:pid:start-token`: who is running a run, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start()}"


def _owner_dead(owner: str, started_at: float, now: float) -> bool:
    host, pid, token = _parse_owner(owner)
    if host != socket.gethostname() or pid is None:
        return now - started_at > STALE_FOREIGN_SECONDS
    if pid == os.getpid():
        # Our PID: ours only if it carries this process start's token (an older owner without a
        # token, or with another token, is an earlier process that had the same PID).
        return token != _process_start()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _parse_owner(owner: str) -> tuple[str, int | None, str | None]:
    """(host, pid, token) of `host:pid:token`, or of the older `host:pid` (token None)."""
    head, _, last = owner.rpartition(":")
    if last.isdigit():  # host:pid
        return head, int(last), None
    host, _, pid = head.rpartition(":")
    return (host, int(pid), last) if pid.isdigit() else (owner, None, None)


class StoreUnavailable(RuntimeError):
    """The audit database did not accept a connection within the wait it was given."""


def wait_for_database(
    engine: sa.Engine,
    wait_seconds: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Connect, retrying for up to `wait_seconds` while the server is not there yet; returns the retries.

    A database server may start after its clients: compose under podman does not wait for a
    healthcheck, and Kubernetes starts pods in any order. Failing at once would leave the process
    to its restart policy and an operator a page of tracebacks; waiting, and saying so, lets it
    start when the database does. SQLite is a file: there is nothing to wait for.
    """
    if engine.dialect.name == "sqlite":
        return 0
    where = engine.url.render_as_string(hide_password=True)
    deadline, delay, retries = clock() + wait_seconds, 0.5, 0
    while True:
        try:
            with engine.connect():
                return retries
        except sa.exc.OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            left = deadline - clock()
            if left <= 0:
                raise StoreUnavailable(
                    f"expected the audit database at {where} to accept connections within {wait_seconds:g} s "
                    f"(MEDROBUST_DATABASE_WAIT_SECONDS); the last attempt said: {reason}"
                ) from None
            log.warning("audit database at %s not reachable yet (%s); retrying for up to %.0f s more", where, reason, left)
            sleep(min(delay, left))
            delay, retries = min(delay * 2, 5.0), retries + 1


def make_engine(url: str) -> sa.Engine:
    """An engine for `url`; SQLite files get their folder, a busy timeout and cross-thread use."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _create_tables(engine: sa.Engine) -> None:
    """Create the tables that are missing. The front end and the audit worker start together on a
    fresh database: when the other process creates a table between our check and our CREATE, ours
    fails; the second pass finds every table there."""
    try:
        metadata.create_all(engine)
    except sa.exc.DBAPIError:
        metadata.create_all(engine)


def _add_missing_columns(engine: sa.Engine) -> tuple[str, ...]:
    """Add the columns a database created by an earlier schema lacks; returns "table.column" of each.

    Every column added since the first schema is nullable without a default, so a plain
    ADD COLUMN is enough. Two processes opening an old database together may both try: the loser's
    error is ignored once the column is found there.
    """
    added = []
    quote = engine.dialect.identifier_preparer.quote
    present = {t: {c["name"] for c in sa.inspect(engine).get_columns(t)} for t in metadata.tables}
    for table in metadata.sorted_tables:
        for column in table.columns:
            if column.name in present[table.name]:
                continue
            ddl = f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {column.type.compile(dialect=engine.dialect)}"
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(ddl))
            except sa.exc.DBAPIError:
                if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                    raise
                continue
            added.append(f"{table.name}.{column.name}")
    return tuple(added)


def _derived(conn: sa.Connection, run: Mapping[str, Any], points: list[Mapping[str, Any]]) -> tuple[dict, list[dict]]:
    """The figures a run written by an earlier schema lacks, derived from its points and samples.

    Returns the run's and each point's missing values (empty when nothing is missing). Such a run's
    robustness score was the mean over the whole grid: it is recomputed without epsilon 0.
    """
    values: dict[str, Any] = {}
    if run["status"] == "succeeded" and run["audit_set_size"] is None:
        counts = conn.execute(
            sa.select(sa.func.count()).select_from(audit_samples).where(audit_samples.c.run_id == run["id"])
            .group_by(audit_samples.c.clean_class)
        ).scalars().all()
        share = max_share(counts)
        attacked = [p["robust_accuracy"] for p in points if p["epsilon_value"] > 0]
        values = {
            "audit_set_size": sum(counts), "predicted_class_max_share": share, "degenerate": share >= DEGENERATE_SHARE,
            "robustness_score": sum(attacked) / len(attacked) if attacked else 0.0,
        }
    n = values.get("audit_set_size", run["audit_set_size"])
    point_values = []
    for p in points:
        missing: dict[str, Any] = {}
        samples = p["samples"] if p["samples"] is not None else n
        if p["samples"] is None and n is not None:
            missing["samples"] = n
        if p["worst_class_robust_accuracy"] is None and p["per_class"]:
            missing["worst_class_robust_accuracy"] = worst_class(p["per_class"])
        if p["robust_accuracy_lower"] is None and samples is not None:
            lower, upper = wilson_interval(round(p["robust_accuracy"] * samples), samples)
            missing |= {"robust_accuracy_lower": lower, "robust_accuracy_upper": upper}
        point_values.append(missing)
    return values, point_values


def _backfill(engine: sa.Engine) -> int:
    """Store the derived figures of succeeded runs written before their columns; returns how many.

    Idempotent (the values are derived from rows that never change), so two processes opening the
    same old database may both run it.
    """
    with engine.connect() as conn:
        ids = conn.execute(
            sa.select(audit_runs.c.id).where(audit_runs.c.status == "succeeded", audit_runs.c.audit_set_size.is_(None))
        ).scalars().all()
    for run_id in ids:
        with engine.begin() as conn:
            run = conn.execute(sa.select(audit_runs).where(audit_runs.c.id == run_id)).one()._mapping
            points = [p._mapping for p in conn.execute(sa.select(audit_points).where(audit_points.c.run_id == run_id)).all()]
            values, point_values = _derived(conn, run, points)
            for p, missing in zip(points, point_values):
                if missing:
                    conn.execute(
                        audit_points.update()
                        .where(audit_points.c.run_id == run_id, audit_points.c.epsilon == p["epsilon"])
                        .values(**missing)
                    )
            if values:
                conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(**values))
    return len(ids)


class AuditStore:
    """Audit runs in a SQL database (tables created, missing columns added and filled, on first use)."""

    def __init__(self, url: str, *, recover: bool = True, wait_seconds: float = 0.0):
        self.url = url
        self.engine = make_engine(url)
        wait_for_database(self.engine, wait_seconds)
        _create_tables(self.engine)
        _add_missing_columns(self.engine)
        _backfill(self.engine)
        self.owner = owner_id()
        if recover:
            self.fail_interrupted()

    def close(self) -> None:
        self.engine.dispose()

    # -- writing --------------------------------------------------------------------------
    def start_run(
        self, *, model: str, version: int, card: Mapping[str, Any], backend: str, attack: str,
        config: Mapping[str, Any], trigger: str = "manual",
    ) -> int:
        """Record a run as 'running' in its own transaction; returns its id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                audit_runs.insert().values(
                    model=model, version=int(version), task=str(card.get("task", "")),
                    backbone=str(card.get("backbone", "")), attention=bool(card.get("attention", False)),
                    backend=backend, attack=attack, status="running", trigger=trigger, owner=self.owner,
                    started_at=time.time(), config=dict(config),
                )
            )
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, result: AuditResult, *, artefacts: str | None = None) -> None:
        """Every figure of a run and its 'succeeded' status, in one transaction."""
        now = time.time()
        with self.engine.begin() as conn:
            self._ensure_audit_set(conn, result.audit_set)
            conn.execute(
                audit_points.insert(),
                [
                    {
                        "run_id": run_id, "epsilon": p.epsilon, "epsilon_value": float(p.epsilon),
                        "robust_accuracy": p.robust_accuracy, "balanced_robust_accuracy": p.balanced_robust_accuracy,
                        "per_class": dict(p.per_class), "attacked": p.attacked, "fooled": p.fooled,
                        "noise_robust_accuracy": p.noise_robust_accuracy, "samples": p.samples,
                        "worst_class_robust_accuracy": p.worst_class_robust_accuracy,
                        "robust_accuracy_lower": p.robust_interval[0], "robust_accuracy_upper": p.robust_interval[1],
                    }
                    for p in result.points
                ],
            )
            conn.execute(
                audit_samples.insert(),
                [
                    {
                        "run_id": run_id, "sample_id": s.sample_id, "label": s.label, "clean_class": s.clean_class,
                        "fooled_at": s.fooled_at, "adversarial_class": s.adversarial_class,
                    }
                    for s in result.samples
                ],
            )
            conn.execute(
                audit_sanity.insert(),
                [{"run_id": run_id, "check": c.name, "passed": c.passed, "detail": c.detail} for c in result.sanity],
            )
            updated = conn.execute(
                audit_runs.update()
                .where(audit_runs.c.id == run_id, audit_runs.c.status == "running")
                .values(
                    status="succeeded", finished_at=now, duration_seconds=result.seconds,
                    audit_set=result.audit_set.fingerprint, clean_accuracy=result.clean_accuracy,
                    balanced_clean_accuracy=result.balanced_clean_accuracy,
                    robustness_score=result.robustness_score, sanity_passed=result.sanity_passed, artefacts=artefacts,
                    seed=result.seed, fooled_by=dict(result.fooled_by), audit_set_size=len(result.audit_set),
                    predicted_class_max_share=result.predicted_class_max_share, degenerate=result.degenerate,
                )
            )
            if updated.rowcount != 1:
                raise RunNotFound(f"expected run {run_id} to be running, found it missing or already finished")

    def _ensure_audit_set(self, conn: sa.Connection, s: AuditSet) -> None:
        # Insert unconditionally: two processes finishing the first runs on a new audit set would
        # both find it missing, and the loser's duplicate must not cost its run. The savepoint
        # keeps the run's transaction usable after the duplicate-key error.
        try:
            with conn.begin_nested():
                conn.execute(
                    audit_sets.insert().values(
                        fingerprint=s.fingerprint, dataset=s.dataset, dataset_fingerprint=s.dataset_fingerprint,
                        seed=s.seed, image_size=s.image_size, sample_ids=list(s.sample_ids), labels=list(s.labels),
                        class_names=list(s.class_names), created_at=time.time(),
                    )
                )
        except sa.exc.IntegrityError:
            pass  # the same fingerprint is the same set

    def fail_run(self, run_id: int, error: str, *, duration_seconds: float | None = None) -> None:
        """Mark a run failed with the reason (its figures, if any were being written, were rolled back)."""
        with self.engine.begin() as conn:
            conn.execute(
                audit_runs.update()
                .where(audit_runs.c.id == run_id, audit_runs.c.status == "running")
                .values(status="failed", finished_at=time.time(), duration_seconds=duration_seconds, error=error[:4000])
            )

    def fail_owned(self, error: str) -> tuple[int, ...]:
        """Mark failed every run this process still has running (it is stopping); returns their ids."""
        now = time.time()
        with self.engine.begin() as conn:
            ids = tuple(conn.execute(
                sa.select(audit_runs.c.id).where(audit_runs.c.owner == self.owner, audit_runs.c.status.in_(ACTIVE))
            ).scalars())
            if ids:
                conn.execute(
                    audit_runs.update()
                    .where(audit_runs.c.id.in_(ids), audit_runs.c.status.in_(ACTIVE))
                    .values(status="failed", finished_at=now, error=error[:4000])
                )
        return ids

    def fail_interrupted(self) -> tuple[int, ...]:
        """Mark failed every 'running' run whose process is gone; returns their ids."""
        now = time.time()
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(audit_runs.c.id, audit_runs.c.owner, audit_runs.c.started_at).where(audit_runs.c.status.in_(ACTIVE))
            ).all()
            dead = tuple(r.id for r in rows if _owner_dead(r.owner, r.started_at, now))
            if dead:
                conn.execute(
                    audit_runs.update()
                    .where(audit_runs.c.id.in_(dead), audit_runs.c.status.in_(ACTIVE))
                    .values(status="failed", finished_at=now, error="interrupted: the process running it stopped")
                )
        return dead

    # -- reading --------------------------------------------------------------------------
    def _record(self, row: Mapping[str, Any], points=(), sanity=()) -> RunRecord:
        data = {k: row[k] for k in audit_runs.c.keys() if k != "owner"}
        data["attention"] = bool(data["attention"])
        data["fooled_by"] = dict(data["fooled_by"] or {})
        for flag in ("sanity_passed", "degenerate"):
            if data[flag] is not None:
                data[flag] = bool(data[flag])
        return RunRecord(**data, points=tuple(points), sanity=tuple(sanity))

    def get_run(self, run_id: int) -> RunRecord:
        """One run with its per-epsilon points and sanity checks."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(audit_runs).where(audit_runs.c.id == run_id)).first()
            if row is None:
                raise RunNotFound(f"no audit run with id {run_id}")
            points = conn.execute(
                sa.select(audit_points).where(audit_points.c.run_id == run_id).order_by(audit_points.c.epsilon_value)
            ).all()
            sanity = conn.execute(
                sa.select(audit_sanity).where(audit_sanity.c.run_id == run_id).order_by(audit_sanity.c.check)
            ).all()
            data = dict(row._mapping)
            point_rows = [{k: v for k, v in p._mapping.items() if k != "run_id"} for p in points]
            run_values, point_values = _derived(conn, data, point_rows)  # a run an older process wrote since open
        return self._record(
            data | run_values,
            [p | values for p, values in zip(point_rows, point_values)],
            [{"check": s.check, "passed": bool(s.passed), "detail": s.detail} for s in sanity],
        )

    def list_runs(self, *, model: str | None = None, status: str | None = None, limit: int = 100) -> tuple[RunRecord, ...]:
        """Runs, newest first."""
        query = sa.select(audit_runs).order_by(audit_runs.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(audit_runs.c.model == model)
        if status is not None:
            query = query.where(audit_runs.c.status == status)
        with self.engine.connect() as conn:
            return tuple(self._record(r._mapping) for r in conn.execute(query).all())

    def samples(self, run_id: int) -> tuple[Mapping[str, Any], ...]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_samples).where(audit_samples.c.run_id == run_id).order_by(audit_samples.c.sample_id)
            ).all()
        return tuple({k: v for k, v in r._mapping.items() if k != "run_id"} for r in rows)

    def audit_set(self, fingerprint: str) -> AuditSet:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(audit_sets).where(audit_sets.c.fingerprint == fingerprint)).first()
        if r is None:
            raise LookupError(f"no audit set with fingerprint {fingerprint}")
        return AuditSet(
            fingerprint=r.fingerprint, dataset_fingerprint=r.dataset_fingerprint, dataset=r.dataset, seed=r.seed,
            image_size=r.image_size, sample_ids=tuple(r.sample_ids), labels=tuple(r.labels), class_names=tuple(r.class_names),
        )

    def latest_succeeded(self) -> tuple[RunRecord, ...]:
        """The newest succeeded run of every (model, version, attack), with points and checks."""
        with self.engine.connect() as conn:
            newest = (
                sa.select(sa.func.max(audit_runs.c.id).label("id"))
                .where(audit_runs.c.status == "succeeded")
                .group_by(audit_runs.c.model, audit_runs.c.version, audit_runs.c.attack)
            )
            ids = [r.id for r in conn.execute(newest).all()]
        return tuple(self.get_run(i) for i in sorted(ids))

    def run_counts(self) -> Mapping[tuple[str, str], int]:
        """Finished runs per (model, status), for the runs counter."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_runs.c.model, audit_runs.c.status, sa.func.count())
                .where(audit_runs.c.status != "running")
                .group_by(audit_runs.c.model, audit_runs.c.status)
            ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def audited_versions(self) -> set[tuple[str, int]]:
        """(model, version) pairs with any run, so a new version is noticed exactly once."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_runs.c.model, audit_runs.c.version).distinct()).all()
        return {(r[0], int(r[1])) for r in rows}

    def partner_run(self, run: RunRecord, *, candidates: int = 20) -> RunRecord | None:
        """The newest succeeded run of the same task and backbone with the other attention setting that is
        `comparable` with `run` (same audit set, attack, steps and grid), among the newest `candidates`."""
        with self.engine.connect() as conn:
            ids = conn.execute(
                sa.select(audit_runs.c.id)
                .where(
                    audit_runs.c.status == "succeeded", audit_runs.c.task == run.task,
                    audit_runs.c.backbone == run.backbone, audit_runs.c.attention == (not run.attention),
                    audit_runs.c.attack == run.attack, audit_runs.c.audit_set == run.audit_set,
                )
                .order_by(audit_runs.c.id.desc())
                .limit(candidates)
            ).scalars().all()
        return next((other for other in map(self.get_run, ids) if comparable(run, other)), None)


    def run_times(self) -> Mapping[str, tuple[float | None, float | None]]:
        """Per model: (wall time of its latest finished run, whatever its outcome; when its latest success finished)."""
        with self.engine.connect() as conn:
            latest = (
                sa.select(sa.func.max(audit_runs.c.id))
                .where(audit_runs.c.status != "running")
                .group_by(audit_runs.c.model)
            )
            durations = conn.execute(
                sa.select(audit_runs.c.model, audit_runs.c.duration_seconds).where(audit_runs.c.id.in_(latest))
            ).all()
            successes = conn.execute(
                sa.select(audit_runs.c.model, sa.func.max(audit_runs.c.finished_at))
                .where(audit_runs.c.status == "succeeded")
                .group_by(audit_runs.c.model)
            ).all()
        times: dict[str, tuple[float | None, float | None]] = {r[0]: (r[1], None) for r in durations}
        for model, finished in successes:
            times[model] = (times.get(model, (None, None))[0], finished)
        return times
