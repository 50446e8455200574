"""The audit worker: claims queued jobs with leases and carries them out, `concurrency` at a time.

Any number of workers share one database. Each runs the same loops; only the holder of the
"scheduler" lease row enqueues (APScheduler's cron for re-audits, the poll for new versions), so
a schedule fires once however many replicas there are. Every worker puts back the jobs whose
leases expired (a worker killed, a host lost). /healthz says when the store is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from service.metrics_server import MetricsServer, start_metrics_server

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from prometheus_client import CollectorRegistry

    from audit.jobs import Enqueuer, Queued
    from audit.runner import AuditRunner
    from training.contract.config import AuditConfig

log = logging.getLogger(__name__)
SCHEDULER_LEASE = "scheduler"
IDLE_POLL_SECONDS = 1.0  # how often an idle slot looks for a queued job


class AuditWorker:
    """Job slots, the schedule (when this worker holds its lease) and the metrics server."""

    def __init__(
        self, config: AuditConfig, runner: AuditRunner, enqueuer: Enqueuer, registry: CollectorRegistry, *,
        serve_metrics: bool = True,
    ) -> None:
        self.config = config
        self.runner = runner
        self.store = runner.store
        self.enqueuer = enqueuer
        self.registry = registry
        self.serve_metrics = serve_metrics
        self.scheduler: BackgroundScheduler | None = None
        self.server: MetricsServer | None = None
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._leader = False
        self._store_ok = True
        self._skip: set[tuple[str, int]] = set()
        self._running: dict[int, str] = {}  # run id -> model, of this worker's slots
        self._lock = threading.Lock()

    # -- enqueuing (the lease holder only) ----------------------------------------------------
    @property
    def leader(self) -> bool:
        return self._leader

    def scheduled(self, trigger: str = "schedule") -> list[Queued]:
        """The cron's firing: a job of every model and attack, from the one worker holding the lease."""
        if not self._hold_schedule():
            return []
        return [q for q in self.enqueuer.enqueue_all(trigger) if q.created]

    def check_new_versions(self) -> list[Queued]:
        """Jobs of the served versions never audited (lease holder only); versions skipped at start wait."""
        if not self._hold_schedule():
            return []
        models = tuple(m for m in self.enqueuer.models() if (m, self.enqueuer.predictor.model_info(m).latest) not in self._skip)
        return [q for q in self.enqueuer.enqueue_all("new_version", models=models) if q.created]

    def skip_served_versions(self) -> None:
        """Leave the versions served now to the schedule: only versions that appear later are
        audited on arrival (`medrobust up --no-audit`)."""
        self._skip |= {(info.name, int(info.latest)) for info in self.enqueuer.predictor.list_models()}

    def _hold_schedule(self) -> bool:
        try:
            self._leader = self.store.hold_lease(SCHEDULER_LEASE, self.config.lease_seconds)
        except sa.exc.DBAPIError as exc:
            log.warning("scheduler lease not renewed, the database did not answer: %s", exc.orig)
            self._leader = False
        return self._leader

    # -- carrying out ---------------------------------------------------------------------------
    def work_once(self) -> bool:
        """Claim one queued job and carry it out in this thread; False when there was none."""
        job = self.store.claim(self.config.lease_seconds)
        if job is None:
            return False
        with self._lock:
            self._running[job.run_id] = job.model
        try:
            self.runner.carry_out(job, stop=self.stopping)
        finally:
            with self._lock:
                self._running.pop(job.run_id, None)
        return True

    def _slot(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.work_once():
                    continue
            except sa.exc.DBAPIError as exc:
                log.warning("no job claimed, the database did not answer: %s", exc.orig)
            self.stopping.wait(IDLE_POLL_SECONDS)

    def _housekeeping(self) -> None:
        """Expired leases back to the queue; the schedule's lease renewed; new versions polled."""
        polled = time.monotonic()  # the first poll after `poll_seconds`, as from the interval job this replaces
        while not self.stopping.wait(min(self.config.lease_seconds / 3, self.config.poll_seconds, 5.0)):
            try:
                for run_id, status in self.store.expire_leases().items():
                    log.warning("run %s: its worker's lease expired; %s", run_id, "queued again" if status == "queued" else status)
                self._store_ok = True
            except sa.exc.DBAPIError as exc:
                self._store_ok = False
                log.warning("the audit database did not answer: %s", exc.orig)
                continue
            if time.monotonic() - polled >= self.config.poll_seconds:
                polled = time.monotonic()
                try:
                    self.check_new_versions()
                except Exception as exc:  # a model server that is away now is asked again next poll
                    log.warning("new versions not checked: %s: %s", type(exc).__name__, exc)
            else:
                self._hold_schedule()

    # -- lifecycle ----------------------------------------------------------------------------
    def running(self) -> dict[int, str]:
        with self._lock:
            return dict(self._running)

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        scheduling = bool(self.scheduler and self.scheduler.running)
        store = self.store.ping()
        return scheduling and store, {
            "scheduler": "running" if scheduling else "stopped", "store": "ok" if store else "unreachable",
            "schedule_holder": self._leader, "running": {str(k): v for k, v in self.running().items()},
        }

    def start(self, *, audit_now: bool = False) -> None:
        """Start the slots, the housekeeping, the cron (and the metrics server); `audit_now` queues
        every model at once (skipping versions with a finished audit under the same settings)."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger

        # AuditConfig checked the expression when it was read (naming the flag or variable).
        trigger = CronTrigger.from_crontab(self.config.schedule)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every firing at INFO
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        self.scheduler.add_job(self.scheduled, trigger, id="scheduled-audit", name="audit every model")
        self.scheduler.start()
        if audit_now and self._hold_schedule():
            self.enqueuer.enqueue_all("startup")
        if self.serve_metrics:
            self.server = start_metrics_server(
                self.config.metrics_host, self.config.metrics_port, self.registry, self.healthy, name="audit-metrics"
            )
        self.stopping.clear()
        self._threads = [threading.Thread(target=self._housekeeping, name="audit-housekeeping", daemon=True)]
        self._threads += [
            threading.Thread(target=self._slot, name=f"audit-slot-{i}", daemon=True) for i in range(self.config.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def metrics_port(self) -> int:
        return self.server.port if self.server is not None else self.config.metrics_port

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop claiming; running jobs go back to the queue at their next checkpoint; the schedule's lease is given up."""
        self.stopping.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for thread in self._threads:
            thread.join(timeout)
        try:
            if self._leader:
                self.store.drop_lease(SCHEDULER_LEASE)
        except sa.exc.DBAPIError:
            pass  # it expires on its own
        if self.server is not None:
            self.server.stop()
