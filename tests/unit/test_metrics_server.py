"""The metrics port's server on its own: /metrics from the registry given, nothing else unless asked."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from service.metrics_server import start_metrics_server


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served():
    registry = CollectorRegistry()
    Counter("medrobust_demo_total", "a demo counter", registry=registry).inc(3)
    server = start_metrics_server("127.0.0.1", 0, registry, name="test-metrics")
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_metrics_come_from_the_registry_given(served):
    status, body = _get(f"{served}/metrics")
    assert status == 200 and b"medrobust_demo_total 3.0" in body


def test_without_a_health_check_only_metrics_are_served(served):
    status, body = _get(f"{served}/healthz")
    assert status == 404
    assert json.loads(body)["error"]["message"] == "expected /metrics, got /healthz"
