"""The front end's Prometheus metrics, declared in one place (the dashboards and alerts rely on these names).

Under gunicorn with several workers, `PROMETHEUS_MULTIPROC_DIR` is set before any worker starts;
each worker then writes its samples to files there and `/metrics` sums them (`exposition`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from training.contract.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidInput,
    ModelNotFound,
    PredictorError,
    SignatureMissing,
)

# Latencies from a few ms (health checks) to tens of seconds (Grad-CAM on a big backbone on CPU).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Backend errors are labelled with gRPC status names whichever backend raised them, so one
# dashboard panel reads the same for the embedded backend and TF Serving.
_ERROR_CODES = (
    (ModelNotFound, "NOT_FOUND"),
    (BackendUnavailable, "UNAVAILABLE"),
    (BackendTimeout, "DEADLINE_EXCEEDED"),
    (InvalidInput, "INVALID_ARGUMENT"),
    (SignatureMissing, "FAILED_PRECONDITION"),
)


def error_code(exc: BaseException) -> str:
    """The gRPC status name of a backend error (`INTERNAL` for anything unexpected)."""
    explicit = getattr(exc, "grpc_code", None)
    if explicit:
        return str(explicit)
    for cls, code in _ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return "UNKNOWN" if isinstance(exc, PredictorError) else "INTERNAL"


def multiprocess_dir() -> str | None:
    """The multiprocess directory when running under several gunicorn workers, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServiceMetrics:
    """The metrics of one app, registered in `registry` (a fresh one per app, so per test)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.http_requests = Counter(
            "medrobust_http_requests_total", "HTTP requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"], registry=registry,
        )
        self.http_duration = Histogram(
            "medrobust_http_request_duration_seconds", "Time to answer an HTTP request, by endpoint.",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.predictions = Counter(
            "medrobust_predictions_total", "Images classified, by model and predicted label.",
            ["model", "label"], registry=registry,
        )
        # A model whose map is NaN still gets its prediction answered; this counts the overlays left out.
        self.overlays_omitted = Counter(
            "medrobust_overlays_omitted_total", "Overlays left out of an answer because the model's map was unusable.",
            ["model", "overlay"], registry=registry,
        )
        self.backend_duration = Histogram(
            "medrobust_backend_request_duration_seconds", "Time the model backend took, by backend and signature.",
            ["backend", "signature"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.backend_errors = Counter(
            "medrobust_backend_errors_total", "Failed backend calls, by backend and gRPC status name.",
            ["backend", "code"], registry=registry,
        )
        # Every worker serves the same models (TF Serving) or loads its own copy (embedded):
        # the most any live worker reports is the meaningful figure, not the sum.
        self.models_loaded = Gauge(
            "medrobust_models_loaded", "Model versions loaded and ready to answer.",
            registry=registry, multiprocess_mode="livemax",
        )

    @contextmanager
    def backend_call(self, backend: str, signature: str) -> Iterator[None]:
        """Time one backend call and count it as an error when it raises."""
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.backend_errors.labels(backend, error_code(exc)).inc()
            raise
        finally:
            self.backend_duration.labels(backend, signature).observe(time.perf_counter() - start)

    def exposition(self) -> bytes:
        """The text format for `/metrics`: this registry, or every worker's files in multiprocess mode."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected, path=directory)
        return generate_latest(collected)
