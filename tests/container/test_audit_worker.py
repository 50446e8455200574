"""The audit worker in its own container of the project's image, beside the front end in another:
it audits the front end's models (the same repository, mounted read-only into both), serves its
metrics on its port, and Debian's Prometheus on the host scrapes both containers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import deploy_queries as dq
from tests.container.containers import HARDENED, serve_options
from tests.container.images import podman
from tests.integration.serving import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
EPSILONS = ("0", "0.01")
AUDIT_SECONDS = 600  # TensorFlow's import, two models' loads and their audits on a loaded 2-core machine
WORKER_HEALTH = "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9101/healthz', timeout=4).status == 200 else 1)"

pytestmark = [
    pytest.mark.container,
    pytest.mark.prometheus,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(not Path(PROMETHEUS).is_file(), reason=f"{PROMETHEUS} absent (Debian package prometheus; .ci/run installs it)"),
]


def _query(prometheus: str, expr: str) -> list:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())["data"]["result"]


def test_the_worker_audits_the_front_ends_models_and_prometheus_scrapes_both(start, tiny_repo, tmp_path):
    # The front end's metrics port is published here, for the host's Prometheus; compose keeps it unpublished.
    frontend = start(options=serve_options(tiny_repo), publish=(8000, 9102))
    worker = start(
        "audit", "worker", "--model-repo", "/models", "--dataset", tiny_repo.dataset_spec, "--now",
        "--samples", "8", "--epsilons", *EPSILONS, "--steps", "2", "--batch-size", "8",
        "--database-url", "sqlite:////tmp/audits.sqlite", "--artefacts-dir", "/tmp/artefacts", "--no-progress",
        # /metrics on the container's address for the host's Prometheus (the worker's default is loopback).
        options=(*HARDENED, "--env", "MEDROBUST_AUDIT_METRICS_HOST=0.0.0.0", "--volume", f"{tiny_repo.path}:/models:ro",
                 "--health-cmd", json.dumps(["python", "-c", WORKER_HEALTH])),
        publish=(9101,),
    )
    frontend.wait_for(8000, "/readyz")
    worker.wait_for(9101, "/healthz")
    prometheus_address = f"127.0.0.1:{free_port()}"
    config = dq.local_prometheus_config(
        frontend=f"127.0.0.1:{frontend.port(9102)}", audit=f"127.0.0.1:{worker.port(9101)}", scrape_interval="1s",
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("w") as log:
        prometheus = subprocess.Popen([
            PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={prometheus_address}", "--log.level=warn",
        ], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{prometheus_address}"
        expected = len(tiny_repo.models) * len(EPSILONS)
        deadline = time.monotonic() + AUDIT_SECONDS
        up, figures = [], []
        while time.monotonic() < deadline and prometheus.poll() is None:
            try:
                up = _query(url, "up == 1")
                figures = _query(url, "medrobust_audit_robust_accuracy")
            except OSError:
                pass  # Prometheus still starting
            if len(up) == 2 and len(figures) >= expected:
                break
            assert worker.state().get("Running"), f"expected the worker to keep running:\n{worker.logs()}"
            log = worker.logs()
            assert "ERROR audit.runner" not in log, f"expected the audit runs to succeed, got:\n{log}"
            time.sleep(2)
        assert {r["metric"]["job"] for r in up} == {"medrobust-frontend", "medrobust-audit"}, (
            f"expected both containers scraped, got {up}\n{(tmp_path / 'prometheus.log').read_text()}"
        )
        audited = {r["metric"]["model"] for r in figures}
        assert audited == set(tiny_repo.models) and len(figures) >= expected, (
            f"expected robust accuracy of {tiny_repo.models} at {EPSILONS}, got {figures}:\n{worker.logs()}"
        )
        assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in figures), figures
        health = podman("healthcheck", "run", worker.name, check=False)
        assert health.returncode == 0, f"expected the worker's healthcheck to pass, got {health.stdout}{health.stderr}"
        assert "Traceback" not in worker.logs(), worker.logs()
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
