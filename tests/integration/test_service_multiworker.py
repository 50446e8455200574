"""`medrobust serve --workers 2` as a real gunicorn process: /metrics, on its own port, sums what every worker counted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration import service_images as images
from tests.integration.serving import free_port, http

pytestmark = pytest.mark.system  # gunicorn with several worker processes


@pytest.fixture
def served(tiny_repo, tmp_path):
    port, metrics_port = free_port(), free_port()
    metrics_dir = tmp_path / "metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MEDROBUST_API_TOKEN", None)
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "medrobust", "serve", "--model-repo", str(tiny_repo.path), "--port", str(port),
         "--metrics-port", str(metrics_port), "--workers", "2", "--threads", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if http(f"{base}/healthz", timeout=2)[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
    if process.poll() is not None:
        log.close()
        pytest.fail(f"medrobust serve exited early:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
    yield base, f"http://127.0.0.1:{metrics_port}", metrics_dir
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


def _post_png(url: str) -> int:
    return http(url, data=images.png(48, 48), content_type="image/png", timeout=120)[0]


def _answering_pids(metrics_dir) -> set[int]:
    return {int(m.group(1)) for f in metrics_dir.glob("counter_*.db") if (m := re.match(r"counter_(\d+)\.db", f.name))}


def test_metrics_sum_across_two_workers(served, tiny_repo):
    base, metrics_base, metrics_dir = served
    url = f"{base}/api/v1/models/{tiny_repo.baseline}/predict"
    # Which worker accepts a connection is the kernel's choice, and a gthread worker queues
    # connections while its thread is busy: rounds of concurrent requests go on until both
    # workers have answered some (the sum below is only a sum when both counted).
    sent = 0
    with ThreadPoolExecutor(4) as pool:
        for _ in range(10):
            statuses = list(pool.map(lambda _: _post_png(url), range(4)))
            assert statuses == [200] * 4
            sent += 4
            if len(_answering_pids(metrics_dir)) == 2:
                break
    pids = _answering_pids(metrics_dir)
    assert len(pids) == 2, f"expected both workers to have answered {sent} requests, counter files from {sorted(pids)}"
    status, body = http(f"{metrics_base}/metrics", timeout=60)
    text = body.decode()
    assert status == 200
    line = f'medrobust_http_requests_total{{endpoint="/api/v1/models/<model>/predict",method="POST",status="200"}} {sent:.1f}'
    assert line in text
    assert re.search(r'medrobust_predictions_total\{label="[^"]+",model="demo-resnet50-baseline"\} ', text)
    predictions = sum(float(v) for v in re.findall(r'medrobust_predictions_total\{[^}]*\} ([0-9.]+)', text))
    assert predictions == sent
    assert re.search(r"medrobust_models_loaded [1-9]", text)
    # The counts per diagnosis are Prometheus's, on the metrics port only: the API's port has no /metrics.
    assert http(f"{base}/metrics", timeout=30)[0] == 404
