"""The audit worker: runs on a cron schedule and on every new model version, and serves /metrics.

APScheduler's BackgroundScheduler fires the cron job (misfires coalesced, one instance at a time);
a poll job notices versions never audited. The metrics it serves are read from the store at each
scrape (audit.metrics.AuditCollector). Each model's runs are kept apart by the runner's lock,
so a scheduled run, a new-version run and an API request never overlap on one model.
"""

from __future__ import annotations

import logging
import threading

from training.contract.config import AuditConfig
from audit.runner import AuditInProgress, AuditRunner, NoAuditSet
from service.metrics_server import start_metrics_server

log = logging.getLogger(__name__)


class AuditWorker:
    """Scheduler, new-version poller and metrics server around one AuditRunner."""

    def __init__(self, config: AuditConfig, runner: AuditRunner, registry, *, serve_metrics: bool = True):
        self.config = config
        self.runner = runner
        self.registry = registry
        self.serve_metrics = serve_metrics
        self.scheduler = None
        self.server = None
        self._seen: set[tuple[str, int]] = set()
        self._seen_lock = threading.Lock()

    # -- what to audit ------------------------------------------------------------------------
    def models(self) -> tuple[str, ...]:
        served = tuple(m.name for m in self.runner.predictor.list_models())
        if self.config.models:
            return tuple(m for m in self.config.models if m in served)
        return served

    def audit_all(self, trigger: str = "schedule") -> list[int]:
        """Start a run of every model not already being audited; returns the run ids."""
        ids = []
        for model in self.models():
            try:
                ids.append(self.runner.submit(model, trigger=trigger))
            except AuditInProgress as exc:
                log.info("skipping %s: %s", model, exc)
            except NoAuditSet as exc:  # reported on the Audits page and as medrobust_audit_unauditable too
                log.warning("not auditing %s: %s", model, exc)
        return ids

    def check_new_versions(self) -> list[int]:
        """Audit every (model, version) that has no run yet."""
        audited = self.runner.store.audited_versions()
        ids = []
        wanted = set(self.config.models)
        served = self.runner.predictor.list_models()
        for info in served:
            key = (info.name, int(info.latest))
            if (wanted and info.name not in wanted) or key in audited:
                continue
            with self._seen_lock:
                if key in self._seen:
                    continue
            try:
                ids.append(self.runner.submit(info.name, trigger="new_version"))
            except AuditInProgress:
                continue  # the running audit's version may be older; the next poll looks again
            except NoAuditSet as exc:
                log.warning("not auditing %s: %s", info.name, exc)
                with self._seen_lock:
                    self._seen.add(key)  # said once per version; the schedule and the metric keep saying it
                continue
            with self._seen_lock:
                self._seen.add(key)
            log.info("new version %s of %s: audit run %s", info.latest, info.name, ids[-1])
        return ids

    def skip_served_versions(self) -> None:
        """Leave the versions served now to the schedule: only versions that appear later are
        audited on arrival (`medrobust up --no-audit`)."""
        served = {(info.name, int(info.latest)) for info in self.runner.predictor.list_models()}
        with self._seen_lock:
            self._seen |= served

    # -- lifecycle ----------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, dict]:
        running = bool(self.scheduler and self.scheduler.running)
        return running, {"scheduler": "running" if running else "stopped", "active": self.runner.active()}

    def start(self, *, audit_now: bool = False) -> None:
        """Start the scheduler (and the metrics server); `audit_now` runs every model at once."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger

        # AuditConfig checked the expression when it was read (naming the flag or variable).
        trigger = CronTrigger.from_crontab(self.config.schedule)
        # APScheduler logs every poll at INFO; the runs log their own start and outcome.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        self.scheduler.add_job(self.audit_all, trigger, id="scheduled-audit", name="audit every model")
        self.scheduler.add_job(
            self.check_new_versions, "interval", seconds=self.config.poll_seconds, id="new-versions",
            name="audit new model versions",
        )
        if audit_now:
            self.scheduler.add_job(self.audit_all, kwargs={"trigger": "startup"}, id="startup-audit", name="first audit")
        self.scheduler.start()
        if self.serve_metrics:
            self.server = start_metrics_server(
                self.config.metrics_host, self.config.metrics_port, self.registry, self.healthy, name="audit-metrics"
            )

    @property
    def metrics_port(self) -> int:
        return self.server.port if self.server is not None else self.config.metrics_port

    def stop(self, *, wait: bool = False) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.server is not None:
            self.server.stop()
        if wait:
            self.runner.join()
