"""Metric names, labels and the gRPC status names of backend errors; a fresh registry per test."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from service.metrics import ServiceMetrics, error_code
from service.tfserving import map_rpc_error
from training.contract.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidInput,
    ModelNotFound,
    PredictorError,
)


def test_names_and_labels():
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.http_requests.labels("/healthz", "GET", "200").inc()
    metrics.http_duration.labels("/healthz").observe(0.01)
    metrics.predictions.labels("derm-resnet50-attention", "mel").inc()
    with pytest.raises(BackendTimeout), metrics.backend_call("tfserving", "gradcam"):
        raise BackendTimeout("slow")
    metrics.models_loaded.set(2)
    get = registry.get_sample_value
    assert get("medrobust_http_requests_total", {"endpoint": "/healthz", "method": "GET", "status": "200"}) == 1
    assert get("medrobust_http_request_duration_seconds_count", {"endpoint": "/healthz"}) == 1
    assert get("medrobust_predictions_total", {"model": "derm-resnet50-attention", "label": "mel"}) == 1
    assert get("medrobust_backend_request_duration_seconds_count", {"backend": "tfserving", "signature": "gradcam"}) == 1
    assert get("medrobust_backend_errors_total", {"backend": "tfserving", "code": "DEADLINE_EXCEEDED"}) == 1
    assert get("medrobust_models_loaded") == 2


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ModelNotFound("x"), "NOT_FOUND"),
        (BackendUnavailable("x"), "UNAVAILABLE"),
        (BackendTimeout("x"), "DEADLINE_EXCEEDED"),
        (InvalidInput("x"), "INVALID_ARGUMENT"),
        (PredictorError("x"), "UNKNOWN"),
        (RuntimeError("x"), "INTERNAL"),
    ],
)
def test_error_codes(exc, code):
    assert error_code(exc) == code


class _RpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "details"


@pytest.mark.parametrize(
    ("status", "cls", "http"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFound, 404),
        (grpc.StatusCode.UNAVAILABLE, BackendUnavailable, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, BackendTimeout, 504),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput, 400),
        (grpc.StatusCode.INTERNAL, PredictorError, 502),
    ],
)
def test_grpc_status_mapping(status, cls, http):
    error = map_rpc_error(_RpcError(status), "Predict(m, gradcam)")
    assert type(error) is cls and error.http_status == http
    assert status.name in error.message and error_code(error) == status.name
