"""Liveness and readiness. /metrics is served on a port of its own (`service.metrics_server`)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from training.contract.errors import PredictorError

bp = Blueprint("health", __name__)


def _state():
    from service.state import state

    return state()


@bp.get("/healthz")
def healthz():
    """The process is up (it does not touch the backend)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The backend answers and at least one model is AVAILABLE; every model's state is listed.

    The outcome is cached for a few seconds (`service.readiness`); a model still loading during a
    rollout does not make the pod unready while another one answers.
    """
    s = _state()
    backend = s.predictor.backend_name
    outcome = s.readiness.check()
    try:
        s.metrics.models_loaded.set(s.predictor.loaded_count())
    except PredictorError:
        pass  # the states below are the answer; the gauge waits for the next probe
    body = {"ready": outcome.ready, "backend": backend, "models": dict(outcome.models)}
    if outcome.ready:
        return jsonify(status="ready", **body)
    if outcome.error is not None:
        reason = f"the {backend} backend is not ready: {outcome.error}"
    else:
        states = ", ".join(f"{name} {state}" for name, state in outcome.models.items()) or "no models"
        reason = f"the {backend} backend holds no AVAILABLE model yet ({states})"
    # The error shape every failure has, with the same fields a ready answer lists.
    response = jsonify(error={"code": "not_ready", "message": reason}, **body)
    response.status_code = 503
    return response
