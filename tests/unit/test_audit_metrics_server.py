"""The audit worker's /metrics server holds a bounded number of threads, whatever connects to it."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from service.metrics_server import BoundedWSGIServer

FLOOD = 4 * BoundedWSGIServer.max_threads


@pytest.fixture
def worker(tmp_path):
    """A real worker over an empty repository, its metrics server on a free loopback port."""
    from audit.jobs import Enqueuer
    from audit.runner import AuditRunner
    from audit.scheduler import AuditWorker
    from audit.store import AuditStore
    from service.embedded import EmbeddedPredictor
    from training.contract.config import AuditConfig

    repo = tmp_path / "repo"
    repo.mkdir()
    config = AuditConfig(
        model_repo=repo, dataset="synthetic:30", progress=False, database_url=f"sqlite:///{tmp_path / 'a.sqlite'}",
        metrics_host="127.0.0.1", metrics_port=0, poll_seconds=3600, schedule="0 0 1 1 *",
    )
    predictor = EmbeddedPredictor(repo)
    store = AuditStore(config.database_url)
    runner = AuditRunner(config, predictor, store)
    worker = AuditWorker(config, runner, Enqueuer(config, predictor, store, runner), CollectorRegistry())
    worker.start()
    yield worker
    worker.stop()
    predictor.close()
    store.close()


def _closed_by_server(conn: socket.socket) -> bool:
    """True once the server has closed `conn` (EOF); False while it holds it open."""
    conn.setblocking(False)
    try:
        return conn.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read()


def test_a_flood_of_silent_connections_gets_no_more_threads_than_the_bound(worker):
    bound = BoundedWSGIServer.max_threads
    url = f"http://127.0.0.1:{worker.metrics_port}"
    assert _get(f"{url}/healthz")[0] == 200
    baseline = threading.active_count()
    flood = [socket.create_connection(("127.0.0.1", worker.metrics_port), timeout=5) for _ in range(FLOOD)]
    most = 0
    try:
        # The server takes `bound` connections and closes the rest; wait until it has seen them all.
        deadline = time.monotonic() + 5
        closed = 0
        while time.monotonic() < deadline:
            most = max(most, threading.active_count() - baseline)
            closed = sum(_closed_by_server(c) for c in flood)
            if closed >= FLOOD - bound:
                break
            time.sleep(0.02)
        most = max(most, threading.active_count() - baseline)
        assert most <= bound, f"{most} threads for {FLOOD} silent connections"
        # At least the connections beyond the bound were turned away (on a slow machine a held one
        # may also have reached the handler's timeout).
        assert closed >= FLOOD - bound
    finally:
        for conn in flood:
            conn.close()
    # The silent clients gone, their threads end and the server answers again.
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= baseline
    assert _get(f"{url}/metrics")[0] == 200
    status, body = _get(f"{url}/healthz")
    assert status == 200 and b'"scheduler": "running"' in body


def test_a_client_that_sends_nothing_loses_its_thread_after_a_few_seconds(worker):
    baseline = threading.active_count()
    silent = socket.create_connection(("127.0.0.1", worker.metrics_port), timeout=5)
    started = time.monotonic()
    try:
        silent.settimeout(15)
        assert silent.recv(1) == b""  # closed by the server, not by our own timeout
    finally:
        silent.close()
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= baseline
    assert _get(f"http://127.0.0.1:{worker.metrics_port}/healthz")[0] == 200
