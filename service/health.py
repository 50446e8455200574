"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import api_error
from service.predictor import PredictorError

bp = Blueprint("health", __name__)


def _state():
    from service.app import state

    return state()


@bp.get("/healthz")
def healthz():
    """The process is up (it does not touch the backend)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The backend answers and at least one model is loaded."""
    s = _state()
    try:
        ready = s.predictor.ready()
        loaded = s.predictor.loaded_count()
    except PredictorError as exc:
        return api_error("not_ready", f"the {s.predictor.backend_name} backend is not ready: {exc.message}", 503)
    s.metrics.models_loaded.set(loaded)
    if not ready:
        return api_error("not_ready", f"the {s.predictor.backend_name} backend holds no loaded model yet", 503)
    return jsonify(status="ready", backend=s.predictor.backend_name, models_loaded=loaded)


@bp.get("/metrics")
def metrics():
    """Prometheus text format (summed over gunicorn workers in multiprocess mode)."""
    s = _state()
    try:
        s.metrics.models_loaded.set(s.predictor.loaded_count())
    except PredictorError:
        pass  # a scrape must not fail because the backend does; the error counters tell that story
    return Response(s.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
