"""gunicorn running `create_app(config)`: one app (and one backend, one gRPC channel) per worker.

The app is built in each worker after the fork (TensorFlow and gRPC must not cross a fork).
Prometheus runs in multiprocess mode; the master serves `/metrics` on its own port
(`--metrics-port`), summing every worker's files, so the API's port never shows the counts. The
same port answers `/healthz` from the master, the liveness that busy workers cannot delay.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.contract.config import ServiceConfig

if TYPE_CHECKING:
    from service.metrics_server import MetricsServer

log = logging.getLogger(__name__)
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s" %(M)sms'


def prepare_metrics_dir() -> Path:
    """PROMETHEUS_MULTIPROC_DIR, created (or emptied: stale files would add old counts) before any worker starts."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="medrobust-metrics-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def run_gunicorn(
    config: ServiceConfig, load: Callable[[], Any], *, workers: int, hooks: Mapping[str, Callable] = {}, quiet: bool = False
) -> int:
    """gunicorn's gthread workers on config.host:port, each serving `load()` (called in the worker,
    after the fork); `hooks` are gunicorn server hooks. Returns when gunicorn is stopped."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": f"{config.host}:{config.port}",
                "workers": workers,
                "worker_class": "medrobust.gunicorn_worker.JsonErrorWorker",  # gthread, JSON for its own 4xx
                "threads": config.threads,
                "timeout": 120,  # the first request of a worker may load a SavedModel
                "graceful_timeout": 30,
                # Request lines only: bodies (patient images) are never logged. `up` keeps its
                # console for the banner, progress and URLs.
                "accesslog": None if quiet else "-",
                # The path without its query string, and no referer: a token sent as ?token=... is
                # refused, but gunicorn's default line (%(r)s, %(f)s) would still have written it down.
                "access_log_format": ACCESS_LOG_FORMAT,
                "loglevel": "warning" if quiet else "info",
                "proc_name": "medrobust-serve",
                # gunicorn's control socket (for `gunicornc`, which nothing here uses) lives in
                # $HOME/.gunicorn: on the image's read-only root that write fails and logs an error.
                "control_socket_disable": True,
                **hooks,
            }
            if os.path.isdir("/dev/shm"):
                # The heartbeat file each worker touches on every loop: in memory, not on disk (as
                # gunicorn advises for containers); it showed up at ~3% of a predict's time.
                settings["worker_tmp_dir"] = "/dev/shm"
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return load()

    Server().run()
    return 0


def serve(config: ServiceConfig) -> int:
    """`medrobust serve`: config.workers workers, their metrics summed by the master on its own port."""
    metrics = _MasterMetrics(config, prepare_metrics_dir())

    def load():
        from prometheus_client import values

        # If anything imported prometheus_client before the directory was set, pick the
        # multiprocess value class now, in the worker, before any metric exists.
        values.ValueClass = values.get_value_class()
        from medrobust.compose import build_app

        return build_app(config)

    log.info(
        "serving %s on http://%s:%d with %d worker(s), %s backend",
        config.model_repo, config.host, config.port, config.workers,
        f"TF Serving at {config.tf_serving}" if config.tf_serving else "embedded",
    )
    hooks: dict[str, Callable[..., Any]] = {"child_exit": _child_exit, "when_ready": metrics.when_ready, "on_exit": metrics.on_exit}
    return run_gunicorn(config, load, workers=config.workers, hooks=hooks)


class _MasterMetrics:
    """gunicorn hooks: /metrics served from the master, which never imports TensorFlow and only
    reads the workers' files."""

    def __init__(self, config: ServiceConfig, directory: Path):
        self.config, self.directory = config, directory
        self.server: MetricsServer | None = None

    def when_ready(self, arbiter) -> None:
        from service.metrics_server import multiprocess_registry, start_metrics_server

        host = self.config.metrics_host or self.config.host
        registry = multiprocess_registry(str(self.directory))

        def healthy() -> tuple[bool, dict]:
            # Liveness, answered by the master's own thread: a burst of uploads or a few slow clients
            # can hold every worker thread (the API port's /healthz then waits behind them), while
            # the master, which restarts a hung worker itself, stays free to answer.
            workers = len(arbiter.WORKERS)
            return workers > 0, {"workers": workers, "expected_workers": arbiter.num_workers}

        self.server = start_metrics_server(host, self.config.metrics_port, registry, healthy, name="frontend-metrics")
        log.info("metrics on http://%s:%d/metrics", host, self.server.port)
        if self.config.database_url:
            from medrobust.compose import import_master_audit_collector

            # The audit's figures join once the store answers: waiting for a database that is not up yet
            # must delay neither the liveness answer above nor gunicorn's start. The waiting thread
            # imports nothing: gunicorn forks its workers right after this hook returns.
            import_master_audit_collector(self.config.database_url)
            threading.Thread(target=self._add_audit_figures, args=(registry,), name="audit-collector", daemon=True).start()

    def _add_audit_figures(self, registry) -> None:
        from medrobust.compose import register_master_audit_collector

        try:
            register_master_audit_collector(self.config, registry)
        except Exception as exc:  # noqa: BLE001  (the front end serves on without them, and says why)
            log.warning("the audit's figures are not on this /metrics: %s: %s", type(exc).__name__, exc)

    def on_exit(self, arbiter) -> None:
        if self.server is not None:
            self.server.stop()


def _child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
