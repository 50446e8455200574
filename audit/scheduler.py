"""The audit worker: runs on a cron schedule and on every new model version, and serves /metrics.

APScheduler's BackgroundScheduler fires the cron job (misfires coalesced, one instance at a time);
a poll job notices versions never audited, and removes the metrics of versions no longer served. Each model's runs are kept apart by the runner's lock,
so a scheduled run, a new-version run and an API request never overlap on one model.
"""

from __future__ import annotations

import json
import logging
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn

from training.contract.config import AuditConfig
from audit.runner import AuditInProgress, AuditRunner

log = logging.getLogger(__name__)


class BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most `max_threads` at once: a connection beyond them is closed
    unanswered, so a flood of connections cannot create unbounded threads (a scrape retries)."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for a client that never sends its request
    max_threads = 8

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_threads)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics server: %d connections open, closing the one from %s", self.max_threads, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A client that went quiet past the handler's timeout is routine, not a traceback on stderr.
        log.debug("metrics server: connection from %s failed", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # seconds a connection may hold its thread while sending nothing (a scrape sends at once)

    def log_message(self, format, *args):  # scrapes every few seconds would flood the log
        log.debug("metrics server: " + format, *args)


def metrics_app(registry, healthy):
    """A WSGI app with /metrics (Prometheus text) and /healthz (JSON)."""
    from prometheus_client import make_wsgi_app

    prometheus = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus(environ, start_response)
        if path == "/healthz":
            ok, detail = healthy()
            body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [body]
        body = json.dumps({"error": {"code": "not_found", "message": f"expected /metrics or /healthz, got {path}"}}).encode()
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [body]

    return app


class AuditWorker:
    """Scheduler, new-version poller and metrics server around one AuditRunner."""

    def __init__(self, config: AuditConfig, runner: AuditRunner, registry, *, serve_metrics: bool = True):
        self.config = config
        self.runner = runner
        self.registry = registry
        self.serve_metrics = serve_metrics
        self.scheduler = None
        self.server = None
        self._server_thread: threading.Thread | None = None
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
        return ids

    def check_new_versions(self) -> list[int]:
        """Audit every (model, version) that has no run yet; drop the metrics of versions no longer served."""
        audited = self.runner.store.audited_versions()
        ids = []
        wanted = set(self.config.models)
        served = self.runner.predictor.list_models()
        if self.runner.metrics is not None:
            self.runner.metrics.retain({info.name: set(info.versions) for info in served})
        for info in served:
            if self.runner.metrics is not None:
                self.runner.metrics.declare(info.name)
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
            with self._seen_lock:
                self._seen.add(key)
            log.info("new version %s of %s: audit run %s", info.latest, info.name, ids[-1])
        return ids

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
            self.server = make_server(
                self.config.metrics_host, self.config.metrics_port, metrics_app(self.registry, self.healthy),
                server_class=BoundedWSGIServer, handler_class=_QuietHandler,
            )
            self._server_thread = threading.Thread(target=self.server.serve_forever, name="audit-metrics", daemon=True)
            self._server_thread.start()

    @property
    def metrics_port(self) -> int:
        return self.server.server_port if self.server is not None else self.config.metrics_port

    def stop(self, *, wait: bool = False) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if wait:
            self.runner.join()
