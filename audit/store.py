"""The audit store: jobs, runs, per-epsilon points, per-sample outcomes and sanity checks, in SQL.

SQLite by default, any SQLAlchemy URL through `MEDROBUST_DATABASE_URL`. Every run is a job's: the
run is queued with its job (`enqueue`; a partial unique index keeps one active job per key), claimed
with a lease by one worker (`claim`, `FOR UPDATE SKIP LOCKED` on PostgreSQL), which renews the lease
while it works, and finished with every figure and its final status in one transaction, but only
while that worker still holds the job. A worker that stops or loses the database lets its lease
expire; the next `expire_leases` queues the job again (the run's `attempt` counts the tries) or,
after the last try, fails it with the reason. Readers never see a half-written run.

The schema moves by Alembic migrations (`audit.migrate`), run by the processes that write; a reader
waits for the schema it reads and never changes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from audit.results import GRADIENT_CHECK, INTERVALS, AuditResult, AuditSet
from training.contract.attacks import ATTACKS, budget_label

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

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
    sa.Column("status", sa.String(20), nullable=False, index=True),  # queued | running | succeeded | failed | cancelled
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
    # Added with jobs (revision 0002): the try this is (NULL in runs from before jobs), and how far it got.
    sa.Column("attempt", sa.Integer),
    sa.Column("progress_done", sa.Integer),
    sa.Column("progress_total", sa.Integer),
    sa.Column("progress_eta_seconds", sa.Float),
    sa.Column("progress_at", sa.Float),
    # Added with intervals on every figure (revision 0003); NULL in runs whose outcomes could not be recounted.
    sa.Column("balanced_predicted_class_max_share", sa.Float),  # what `degenerate` reads since 0003
    sa.Column("clean_accuracy_lower", sa.Float),  # 95% Wilson
    sa.Column("clean_accuracy_upper", sa.Float),
    sa.Column("balanced_clean_accuracy_lower", sa.Float),  # 95% stratified bootstrap, seeded
    sa.Column("balanced_clean_accuracy_upper", sa.Float),
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
    # Added with intervals on every figure (revision 0003).
    sa.Column("class_counts", sa.JSON),  # class -> [images standing, images]
    sa.Column("class_intervals", sa.JSON),  # class -> [lower, upper], 95% Wilson
    sa.Column("worst_class", sa.String(200)),
    sa.Column("worst_class_robust_accuracy_lower", sa.Float),
    sa.Column("worst_class_robust_accuracy_upper", sa.Float),
    sa.Column("balanced_robust_accuracy_lower", sa.Float),  # 95% stratified bootstrap, seeded
    sa.Column("balanced_robust_accuracy_upper", sa.Float),
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

audit_jobs = sa.Table(
    "audit_jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("audit_runs.id", ondelete="CASCADE"), nullable=False, unique=True),
    sa.Column("key", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),  # queued | running | done
    sa.Column("priority", sa.Integer, nullable=False),  # lower is claimed first
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("available_at", sa.Float, nullable=False),  # not claimed before (a retry's back-off)
    sa.Column("lease_owner", sa.String(300)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
JOB_ACTIVE = ("queued", "running")
_active_job = audit_jobs.c.status.in_(JOB_ACTIVE)
sa.Index("uq_audit_jobs_active_key", audit_jobs.c.key, unique=True, postgresql_where=_active_job, sqlite_where=_active_job)
sa.Index("ix_audit_jobs_claim", audit_jobs.c.status, audit_jobs.c.priority, audit_jobs.c.id)

audit_leases = sa.Table(
    "audit_leases", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("owner", sa.String(300), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# Claimed first: what someone asked for now, then a version nobody has audited, then the schedule's re-audits.
PRIORITY = {"api": 0, "cli": 0, "new_version": 1, "startup": 1, "schedule": 2}
RESTARTED = "restarted after interruption"



class RunNotFound(LookupError):
    """No run with that id."""


class LeaseLost(RuntimeError):
    """The worker no longer holds the job (its lease expired and the job went back, or it was cancelled)."""


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
    attempt: int | None = None
    progress_done: int | None = None
    progress_total: int | None = None
    progress_eta_seconds: float | None = None
    progress_at: float | None = None
    balanced_predicted_class_max_share: float | None = None
    clean_accuracy_lower: float | None = None
    clean_accuracy_upper: float | None = None
    balanced_clean_accuracy_lower: float | None = None
    balanced_clean_accuracy_upper: float | None = None
    points: tuple[Mapping[str, Any], ...] = ()
    sanity: tuple[Mapping[str, Any], ...] = ()

    @property
    def steps(self) -> Any:
        return self.config.get("steps")

    @property
    def budget_label(self) -> str:
        """"standard" or "reduced (25 iterations, 300 queries)", from the settings the run was queued with
        ("unknown" for an attack no longer registered: its defaults are not known here)."""
        return budget_label(self.attack, self.config) if self.attack in ATTACKS else "unknown"

    @property
    def epsilons(self) -> tuple[str, ...]:
        return tuple(p["epsilon"] for p in self.points)

    @property
    def progress(self) -> dict[str, Any] | None:
        """{"done", "total", "fraction", "eta_seconds"} once the worker has counted the work, else None."""
        if not self.progress_total:
            return None
        done = self.progress_done or 0
        return {
            "done": done, "total": self.progress_total, "fraction": round(done / self.progress_total, 4),
            "eta_seconds": None if self.progress_eta_seconds is None else round(self.progress_eta_seconds, 1),
        }

    @property
    def black_box_only(self) -> bool:
        """The run's served gradient failed its consistency check: a query-only attack ran in place of its own
        (read from the stored sanity checks: False when they were not loaded)."""
        return any(s["check"] == GRADIENT_CHECK and not s["passed"] for s in self.sanity)

    @property
    def note(self) -> str | None:
        """Why this run was tried more than once, for the page and the API."""
        return f"{RESTARTED} (attempt {self.attempt})" if self.attempt and self.attempt > 1 else None

    def to_json(self) -> dict[str, Any]:
        hidden = {"progress_done", "progress_total", "progress_eta_seconds", "progress_at"}
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in hidden}
        doc["config"] = dict(self.config)
        doc["fooled_by"] = dict(self.fooled_by)
        doc["budget_label"] = self.budget_label
        doc["points"] = [dict(p) for p in self.points]
        doc["sanity"] = [dict(s) for s in self.sanity]
        doc["progress"] = self.progress
        doc["note"] = self.note
        doc["intervals"] = dict(INTERVALS)
        doc["black_box_only"] = self.black_box_only
        return doc


@dataclass(frozen=True)
class Enqueued:
    """What `enqueue` did: `created` a job and its queued run, or found `run_id` already `queued`,
    `running`, or `succeeded` under the same settings (when asked to skip those)."""

    run_id: int
    created: bool
    status: str


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds the lease of, and what its run is to do."""

    job_id: int
    run_id: int
    attempt: int
    max_attempts: int
    model: str
    version: int
    attack: str
    trigger: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class QueueStats:
    """The queue at a glance, for the metrics collector."""

    queued: int
    running: int
    failed: int
    oldest_queued_age_seconds: float | None


def comparable(a: RunRecord, b: RunRecord) -> bool:
    """Two runs whose figures may be set side by side: same audit set, attack, steps and epsilon grid."""
    return (
        a.audit_set is not None and a.audit_set == b.audit_set and a.attack == b.attack and a.steps == b.steps
        and a.epsilons == b.epsilons
    )


def job_key(model: str, version: int, config: Mapping[str, Any]) -> str:
    """What makes two jobs the same: model, version and the run's settings (attack and its budget,
    audit set spec and size, seed), as sha256 of their canonical JSON."""
    doc = {"model": model, "version": int(version), "config": dict(config)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@functools.cache
def _process_start() -> str:
    """A token drawn once per process start. A restarted container is PID 1 again, so a PID alone
    cannot tell this process from the one whose lease it finds in the store."""
    return "s" + uuid.uuid4().hex[:12]


def owner_id() -> str:
    """`host:pid:start-token`: who holds a lease, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start()}"


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
        def _pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class AuditStore:
    """Audit jobs and runs in a SQL database.

    `migrate=True` (the processes that write) brings the schema to this code's head first;
    `migrate=False` (the read-only front end) waits up to `wait_seconds` for a writer to do so and
    never changes it. `owner` names this process in the leases it takes.
    """

    def __init__(self, url: str, *, migrate: bool = True, wait_seconds: float = 0.0, owner: str | None = None):
        from audit import migrate as migrations

        self.url = url
        self.engine = make_engine(url)
        wait_for_database(self.engine, wait_seconds)
        if migrate:
            migrations.upgrade(self.engine)
        else:
            migrations.wait_for_schema(self.engine, wait_seconds)
        self.owner = owner or owner_id()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        """Whether the database answers now (the worker's /healthz)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.DBAPIError:
            return False

    # -- the queue ------------------------------------------------------------------------
    def enqueue(
        self, *, model: str, version: int, card: Mapping[str, Any], backend: str, attack: str,
        config: Mapping[str, Any], trigger: str = "manual", max_attempts: int = 3, skip_if: tuple[str, ...] = (),
    ) -> Enqueued:
        """Queue a job and its run, unless the same job is already queued or running, or an earlier
        run of it ended with a status in `skip_if` (e.g. "succeeded": a restart does not audit a
        version again). The database's unique index decides, whichever process asks."""
        key = job_key(model, version, config)
        now = time.time()
        with self.engine.begin() as conn:
            if skip_if:
                done = conn.execute(
                    sa.select(audit_runs.c.id, audit_runs.c.status).join(audit_jobs, audit_jobs.c.run_id == audit_runs.c.id)
                    .where(audit_jobs.c.key == key, audit_runs.c.status.in_(skip_if)).order_by(audit_runs.c.id.desc())
                ).first()
                if done is not None:
                    return Enqueued(done.id, False, done.status)
            try:
                with conn.begin_nested():  # the duplicate's error must not end the outer transaction
                    inserted = conn.execute(
                        audit_runs.insert().values(
                            model=model, version=int(version), task=str(card.get("task", "")),
                            backbone=str(card.get("backbone", "")), attention=bool(card.get("attention", False)),
                            backend=backend, attack=attack, status="queued", trigger=trigger, owner="",
                            started_at=now, config=dict(config), attempt=0,
                        )
                    ).inserted_primary_key
                    if inserted is None:  # only an executemany or a non-insert has none
                        raise RuntimeError(f"expected the id of the run inserted for job {key}, got none")
                    run_id = inserted[0]
                    conn.execute(audit_jobs.insert().values(
                        run_id=run_id, key=key, status="queued", priority=PRIORITY.get(trigger, 0), attempts=0,
                        max_attempts=max_attempts, available_at=now, cancel_requested=False, created_at=now,
                    ))
                return Enqueued(int(run_id), True, "queued")
            except sa.exc.IntegrityError:
                pass
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(audit_jobs.c.run_id, audit_jobs.c.status).where(audit_jobs.c.key == key, _active_job)
            ).first()
        if row is None:  # the other job finished between our insert and this read: ask again
            return self.enqueue(model=model, version=version, card=card, backend=backend, attack=attack, config=config,
                                trigger=trigger, max_attempts=max_attempts, skip_if=skip_if)
        return Enqueued(int(row.run_id), False, row.status)

    def claim(self, lease_seconds: float, *, run_ids: tuple[int, ...] | None = None) -> ClaimedJob | None:
        """Take the first queued job (by priority, then age; among `run_ids` when given) with a lease;
        None when there is none. Concurrent workers skip each other's locked rows on PostgreSQL; the
        conditional update settles it on SQLite."""
        now = time.time()
        with self.engine.begin() as conn:
            query = (
                sa.select(audit_jobs.c.id, audit_jobs.c.run_id, audit_jobs.c.attempts, audit_jobs.c.max_attempts)
                .where(audit_jobs.c.status == "queued", audit_jobs.c.available_at <= now)
                .order_by(audit_jobs.c.priority, audit_jobs.c.id).limit(1).with_for_update(skip_locked=True)
            )
            if run_ids is not None:
                query = query.where(audit_jobs.c.run_id.in_(run_ids))
            job = conn.execute(query).first()
            if job is None:
                return None
            attempt = job.attempts + 1
            taken = conn.execute(
                audit_jobs.update().where(audit_jobs.c.id == job.id, audit_jobs.c.status == "queued").values(
                    status="running", attempts=attempt, lease_owner=self.owner, lease_expires_at=now + lease_seconds,
                )
            )
            if taken.rowcount != 1:
                return None
            conn.execute(audit_runs.update().where(audit_runs.c.id == job.run_id).values(
                status="running", attempt=attempt, owner=self.owner, started_at=now, error=None,
                progress_done=None, progress_total=None, progress_eta_seconds=None, progress_at=None,
            ))
            run = conn.execute(sa.select(audit_runs).where(audit_runs.c.id == job.run_id)).one()
        return ClaimedJob(job.id, job.run_id, attempt, job.max_attempts, run.model, int(run.version), run.attack,
                          run.trigger, dict(run.config))

    def renew(self, job_id: int, lease_seconds: float) -> str:
        """Extend this worker's lease on a job: "held", "cancel" (held, but its cancellation was
        asked for) or "lost" (no longer this worker's); the worker stops at its next checkpoint
        unless it is "held"."""
        with self.engine.begin() as conn:
            renewed = conn.execute(
                audit_jobs.update()
                .where(audit_jobs.c.id == job_id, audit_jobs.c.status == "running", audit_jobs.c.lease_owner == self.owner)
                .values(lease_expires_at=time.time() + lease_seconds)
            )
            if renewed.rowcount != 1:
                return "lost"
            cancel = conn.execute(sa.select(audit_jobs.c.cancel_requested).where(audit_jobs.c.id == job_id)).scalar_one()
            return "cancel" if cancel else "held"

    def report_progress(self, run_id: int, done: int, total: int, eta_seconds: float | None) -> str:
        """How far a running run is (the worker calls this at a bounded rate); returns the job's state
        as `renew` does, so the worker stops at this checkpoint when it is cancelled or not its own."""
        with self.engine.begin() as conn:
            conn.execute(
                audit_runs.update().where(audit_runs.c.id == run_id, audit_runs.c.status == "running")
                .values(progress_done=done, progress_total=total, progress_eta_seconds=eta_seconds, progress_at=time.time())
            )
            job = conn.execute(
                sa.select(audit_jobs.c.status, audit_jobs.c.lease_owner, audit_jobs.c.cancel_requested)
                .where(audit_jobs.c.run_id == run_id)
            ).first()
        if job is None or job.status != "running" or job.lease_owner != self.owner:
            return "lost"
        return "cancel" if job.cancel_requested else "held"

    def _held(self, conn: sa.Connection, run_id: int) -> None:
        """Lock this run's job if this worker holds it; raises LeaseLost if another has it or it is over."""
        job = conn.execute(
            sa.select(audit_jobs.c.status, audit_jobs.c.lease_owner).where(audit_jobs.c.run_id == run_id).with_for_update()
        ).first()
        if job is None or job.status != "running" or job.lease_owner != self.owner:
            raise LeaseLost(f"expected run {run_id}'s job to be running under this worker's lease, found it "
                            + ("missing" if job is None else f"{job.status} under {job.lease_owner or 'no lease'}"))

    def _end_job(self, conn: sa.Connection, run_id: int) -> None:
        conn.execute(audit_jobs.update().where(audit_jobs.c.run_id == run_id).values(
            status="done", lease_owner=None, lease_expires_at=None,
        ))

    def finish_run(self, run_id: int, result: AuditResult, *, artefacts: str | None = None) -> None:
        """Every figure of a run and its 'succeeded' status, in one transaction, while this worker holds its job."""
        now = time.time()
        with self.engine.begin() as conn:
            self._held(conn, run_id)
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
                        **p.intervals(),
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
                    balanced_predicted_class_max_share=result.balanced_predicted_class_max_share,
                    clean_accuracy_lower=result.clean_interval[0], clean_accuracy_upper=result.clean_interval[1],
                    balanced_clean_accuracy_lower=result.balanced_clean_interval[0],
                    balanced_clean_accuracy_upper=result.balanced_clean_interval[1],
                    progress_done=sa.func.coalesce(audit_runs.c.progress_total, audit_runs.c.progress_done),
                    progress_eta_seconds=0.0, progress_at=now,
                )
            )
            if updated.rowcount != 1:
                raise RunNotFound(f"expected run {run_id} to be running, found it missing or already finished")
            self._end_job(conn, run_id)

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

    def fail_run(self, run_id: int, error: str, *, duration_seconds: float | None = None, status: str = "failed") -> None:
        """End this worker's run `failed` (or `cancelled`) with the reason; its figures, if any were
        being written, were rolled back."""
        with self.engine.begin() as conn:
            self._held(conn, run_id)
            conn.execute(
                audit_runs.update().where(audit_runs.c.id == run_id, audit_runs.c.status == "running")
                .values(status=status, finished_at=time.time(), duration_seconds=duration_seconds, error=error[:4000])
            )
            self._end_job(conn, run_id)

    def retry_run(self, run_id: int, error: str, *, delay_seconds: float = 0.0, count_attempt: bool = True) -> str:
        """Give this worker's job back to the queue (after `delay_seconds`); returns the run's status.

        A job whose last attempt this was is failed with `error` instead. `count_attempt=False`
        (the worker is stopping, SIGTERM) does not use up one of the job's tries.
        """
        with self.engine.begin() as conn:
            self._held(conn, run_id)
            job = conn.execute(sa.select(audit_jobs).where(audit_jobs.c.run_id == run_id)).one()
            if count_attempt and job.attempts >= job.max_attempts:
                conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(
                    status="failed", finished_at=time.time(),
                    error=f"gave up after {job.attempts} attempts; the last: {error}"[:4000],
                ))
                self._end_job(conn, run_id)
                return "failed"
            conn.execute(audit_jobs.update().where(audit_jobs.c.id == job.id).values(
                status="queued", lease_owner=None, lease_expires_at=None, available_at=time.time() + delay_seconds,
                attempts=job.attempts if count_attempt else job.attempts - 1,
            ))
            conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(
                status="queued", error=f"queued again: {error}"[:4000],
                attempt=job.attempts if count_attempt else job.attempts - 1,
            ))
            return "queued"

    def expire_leases(self) -> dict[int, str]:
        """Queue again every running job whose lease has expired (its worker stopped or lost the
        database), or fail it after its last attempt; returns {run id: new status}."""
        now = time.time()
        changed: dict[int, str] = {}
        with self.engine.begin() as conn:
            expired = conn.execute(
                sa.select(audit_jobs).where(audit_jobs.c.status == "running", audit_jobs.c.lease_expires_at < now)
                .with_for_update(skip_locked=True)
            ).all()
            for job in expired:
                reason = f"interrupted: the lease of {job.lease_owner} expired (worker stopped or unreachable)"
                over = job.attempts >= job.max_attempts
                moved = conn.execute(
                    audit_jobs.update()
                    .where(audit_jobs.c.id == job.id, audit_jobs.c.status == "running", audit_jobs.c.lease_expires_at < now)
                    .values(status="done" if over else "queued", lease_owner=None, lease_expires_at=None, available_at=now)
                )
                if moved.rowcount != 1:
                    continue
                values: dict[str, Any]  # the status, and for a failed run when and why
                if over:
                    values = {"status": "failed", "finished_at": now,
                              "error": f"gave up after {job.attempts} attempts; the last: {reason}"}
                else:
                    values = {"status": "queued", "error": f"{reason}; queued again"}
                conn.execute(audit_runs.update().where(audit_runs.c.id == job.run_id).values(**values))
                changed[job.run_id] = values["status"]
        return changed

    def cancel(self, run_id: int) -> str | None:
        """Cancel a run: a queued one at once ("cancelled"), a running one at its worker's next
        checkpoint ("cancelling"); None for a run that has already ended. Raises RunNotFound."""
        with self.engine.begin() as conn:
            run = conn.execute(sa.select(audit_runs.c.status).where(audit_runs.c.id == run_id).with_for_update()).first()
            if run is None:
                raise RunNotFound(f"no audit run with id {run_id}")
            if run.status == "queued":
                conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(
                    status="cancelled", finished_at=time.time(), error="cancelled before it started",
                ))
                self._end_job(conn, run_id)
                return "cancelled"
            if run.status == "running":
                conn.execute(audit_jobs.update().where(audit_jobs.c.run_id == run_id).values(cancel_requested=True))
                return "cancelling"
            return None

    def hold_lease(self, name: str, seconds: float) -> bool:
        """Take or renew the named lease for this process; False while another holds it unexpired."""
        now = time.time()
        try:
            with self.engine.begin() as conn:
                taken = conn.execute(
                    audit_leases.update()
                    .where(audit_leases.c.name == name, sa.or_(audit_leases.c.owner == self.owner, audit_leases.c.expires_at < now))
                    .values(owner=self.owner, expires_at=now + seconds)
                )
                if taken.rowcount == 1:
                    return True
                if conn.execute(sa.select(audit_leases.c.name).where(audit_leases.c.name == name)).first() is not None:
                    return False
                conn.execute(audit_leases.insert().values(name=name, owner=self.owner, expires_at=now + seconds))
                return True
        except sa.exc.IntegrityError:  # another process inserted the row first: it holds the lease
            return False

    def drop_lease(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(audit_leases.delete().where(audit_leases.c.name == name, audit_leases.c.owner == self.owner))

    def queue_stats(self) -> QueueStats:
        """Queued and running jobs, failed runs, and how long the oldest queued job has waited."""
        with self.engine.connect() as conn:
            jobs: dict[str, int] = dict(conn.execute(
                sa.select(audit_jobs.c.status, sa.func.count()).where(_active_job).group_by(audit_jobs.c.status)
            ).all())
            failed = conn.execute(sa.select(sa.func.count()).select_from(audit_runs).where(audit_runs.c.status == "failed")).scalar_one()
            oldest = conn.execute(sa.select(sa.func.min(audit_jobs.c.created_at)).where(audit_jobs.c.status == "queued")).scalar()
        return QueueStats(int(jobs.get("queued", 0)), int(jobs.get("running", 0)), int(failed),
                          None if oldest is None else max(0.0, time.time() - oldest))

    def running_progress(self) -> tuple[tuple[str, int, str, int, int], ...]:
        """(model, version, attack, done, total) of every running run (done and total 0 until counted)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_runs.c.model, audit_runs.c.version, audit_runs.c.attack, audit_runs.c.progress_done,
                          audit_runs.c.progress_total).where(audit_runs.c.status == "running").order_by(audit_runs.c.id)
            ).all()
        return tuple((r[0], int(r[1]), r[2], int(r[3] or 0), int(r[4] or 0)) for r in rows)

    def start_run(
        self, *, model: str, version: int, card: Mapping[str, Any], backend: str, attack: str,
        config: Mapping[str, Any], trigger: str = "manual", lease_seconds: float = 3600.0,
    ) -> int:
        """Queue one run and claim it for this process at once; returns its id (scripts and tests).

        Raises RuntimeError if the same job is already queued or running elsewhere.
        """
        queued = self.enqueue(model=model, version=version, card=card, backend=backend, attack=attack, config=config,
                              trigger=trigger)
        if not queued.created:
            raise RuntimeError(f"expected to queue a new run of {model} version {version}, found run {queued.run_id} {queued.status}")
        claimed = self.claim(lease_seconds, run_ids=(queued.run_id,))
        if claimed is None:
            raise RuntimeError(f"expected to claim run {queued.run_id}, another worker took it first")
        return claimed.run_id

    # -- reading --------------------------------------------------------------------------
    def _record(
        self, row: sa.RowMapping, points: Iterable[Mapping[str, Any]] = (), sanity: Iterable[Mapping[str, Any]] = (),
    ) -> RunRecord:
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
        return self._record(
            row._mapping,
            [{k: v for k, v in p._mapping.items() if k != "run_id"} for p in points],
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
                .where(audit_runs.c.status.not_in(JOB_ACTIVE))
                .group_by(audit_runs.c.model, audit_runs.c.status)
            ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

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
