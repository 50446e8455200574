"""`/readyz` against TF Serving: ready while one model is AVAILABLE (another may be loading, as in a
rollout's pick-up), every model's state listed, a short deadline, and one status round per cache window."""

from __future__ import annotations

import time

import pytest

from service.app import create_app
from service.readiness import READY_CACHE_SECONDS, ReadinessProbe
from service.tfserving import TFServingPredictor
from training.contract.config import ServiceConfig


@pytest.fixture
def app(tiny_repo, tfserving_fake):
    predictor = TFServingPredictor(tfserving_fake.address, deadline_seconds=5, model_repo=tiny_repo.path)
    yield create_app(ServiceConfig(model_repo=tiny_repo.path, tf_serving=tfserving_fake.address), predictor=predictor)
    predictor.close()


def test_one_available_model_is_ready_and_every_state_is_listed(app, tfserving_fake, tiny_repo):
    with tfserving_fake.loading(tiny_repo.attention):
        response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {
        "status": "ready", "ready": True, "backend": "tfserving",
        "models": {tiny_repo.baseline: "AVAILABLE", tiny_repo.attention: "LOADING"},
    }


def test_a_model_tf_serving_does_not_know_yet_leaves_the_pod_ready(tiny_repo, tfserving_fake):
    # models.config names a model TF Serving has not picked up yet: its status call is NOT_FOUND.
    added = "demo-resnet50-added"
    predictor = TFServingPredictor(tfserving_fake.address, models=(tiny_repo.baseline, added))
    client = create_app(ServiceConfig(models=predictor.model_names(), tf_serving=tfserving_fake.address), predictor=predictor).test_client()
    try:
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json["models"] == {tiny_repo.baseline: "AVAILABLE", added: "NOT_FOUND"}
    finally:
        predictor.close()


def test_no_available_model_is_503_with_every_state(app, tfserving_fake, tiny_repo):
    with tfserving_fake.loading(*tiny_repo.models):
        response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.json
    assert (body["ready"], body["backend"]) == (False, "tfserving")
    assert body["models"] == {tiny_repo.baseline: "LOADING", tiny_repo.attention: "LOADING"}
    assert body["error"]["code"] == "not_ready"
    message = body["error"]["message"]
    assert message.startswith("the tfserving backend holds no AVAILABLE model yet (")
    assert f"{tiny_repo.baseline} LOADING" in message and f"{tiny_repo.attention} LOADING" in message


def test_probes_within_the_cache_window_ask_tf_serving_once(app, tfserving_fake, tiny_repo):
    client = app.test_client()
    before = tfserving_fake.calls["GetModelStatus"]
    assert [client.get("/readyz").status_code for _ in range(3)] == [200, 200, 200]
    assert tfserving_fake.calls["GetModelStatus"] - before == len(tiny_repo.models)  # one status call per model, once


def test_after_the_window_a_probe_asks_again(app, tfserving_fake, tiny_repo):
    now = [100.0]
    state = app.extensions["medrobust"]
    state.readiness = ReadinessProbe(state.predictor, clock=lambda: now[0])
    client = app.test_client()
    with tfserving_fake.loading(*tiny_repo.models):
        assert client.get("/readyz").status_code == 503
    now[0] = 100.0 + READY_CACHE_SECONDS - 1
    assert client.get("/readyz").status_code == 503  # the cached answer: TF Serving was not asked
    now[0] = 100.0 + READY_CACHE_SECONDS
    assert client.get("/readyz").json["models"] == {tiny_repo.baseline: "AVAILABLE", tiny_repo.attention: "AVAILABLE"}


def test_a_slow_backend_is_not_ready_within_the_short_deadline(tiny_repo, tfserving_fake):
    predictor = TFServingPredictor(tfserving_fake.address, model_repo=tiny_repo.path, probe_deadline_seconds=0.3)
    client = create_app(ServiceConfig(model_repo=tiny_repo.path), predictor=predictor).test_client()
    try:
        with tfserving_fake.faults(delay_seconds=1.5):
            started = time.monotonic()
            response = client.get("/readyz")
            elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json["models"] == {tiny_repo.baseline: "DEADLINE_EXCEEDED", tiny_repo.attention: "DEADLINE_EXCEEDED"}
        assert elapsed < 1.5  # the probe's own deadline answered, not the server (nor the 10 s call deadline and retries)
    finally:
        predictor.close()
