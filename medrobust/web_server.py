"""gunicorn running `create_app(config)`: one app (and one backend, one gRPC channel) per worker.

The app is built in each worker after the fork (TensorFlow and gRPC must not cross a fork).
Prometheus runs in multiprocess mode so `/metrics` sums every worker.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

from training.contract.config import ServiceConfig

log = logging.getLogger(__name__)


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


def serve(config: ServiceConfig) -> int:
    """Run gunicorn until it is stopped; returns its exit status."""
    prepare_metrics_dir()
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": f"{config.host}:{config.port}",
                "workers": config.workers,
                "worker_class": "gthread",
                "threads": config.threads,
                "timeout": 120,  # the first request of a worker may load a SavedModel
                "graceful_timeout": 30,
                "accesslog": "-",  # request lines only: bodies (patient images) are never logged
                "child_exit": _child_exit,
                "proc_name": "medrobust-serve",
            }
            if os.path.isdir("/dev/shm"):
                # The heartbeat file each worker touches on every loop: in memory, not on disk (as
                # gunicorn advises for containers); it showed up at ~3% of a predict's time.
                settings["worker_tmp_dir"] = "/dev/shm"
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            import prometheus_client.values as values

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
    Server().run()
    return 0


def _child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
