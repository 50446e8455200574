"""TF Serving specifics: deadlines, retries on UNAVAILABLE within a budget, status mapping, cards without a repository."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from service.app import create_app
from service.tfserving import RETRY_MAX_TOKENS, TFServingPredictor
from tests.integration import service_images as images
from tests.integration.serving import free_port
from training.contract.config import ServiceConfig
from training.contract.errors import BackendTimeout, BackendUnavailable, ModelNotFound


def _x() -> np.ndarray:
    return np.full((1, 64, 64, 3), 0.5, np.float32)


@pytest.fixture
def fresh(tiny_repo, tfserving_server):
    """A predictor of its own: fault tests must not leave cached state, or a spent retry budget (one
    per channel), in the shared one."""
    p = TFServingPredictor(tfserving_server, deadline_seconds=5, model_repo=tiny_repo.path, retries=3, backoff_seconds=0.01)
    p.model_info(tiny_repo.baseline)  # warm the status cache so only Predict meets the faults
    yield p
    p.close()


def test_unavailable_is_retried(fresh, tfserving_fake, tiny_repo):
    before = tfserving_fake.calls["Predict"]
    with tfserving_fake.faults(status=grpc.StatusCode.UNAVAILABLE, count=2):
        assert fresh.predict(tiny_repo.baseline, _x()).version == 1
    assert tfserving_fake.calls["Predict"] - before == 3  # two refused attempts, then the answer


def test_persistent_unavailable_is_503_after_the_retries(fresh, tfserving_fake, tiny_repo):
    before = tfserving_fake.calls["Predict"]
    with tfserving_fake.faults(status=grpc.StatusCode.UNAVAILABLE), pytest.raises(BackendUnavailable) as caught:
        fresh.predict(tiny_repo.baseline, _x())
    assert caught.value.http_status == 503 and caught.value.details == {"grpc_code": "UNAVAILABLE"}
    assert tfserving_fake.calls["Predict"] - before == 4  # the first attempt and 3 retries


def test_an_overloaded_server_gets_at_most_the_budgets_share_of_retries(fresh, tfserving_fake, tiny_repo):
    # Without a budget, 3 retries per call would make 4 attempts of each of these 40 calls (160):
    # a server shedding load would get four times the load it sheds.
    calls = 40
    before = tfserving_fake.calls["Predict"]
    with tfserving_fake.faults(status=grpc.StatusCode.UNAVAILABLE):
        for _ in range(calls):
            with pytest.raises(BackendUnavailable):
                fresh.predict(tiny_repo.baseline, _x())
    attempts = tfserving_fake.calls["Predict"] - before
    assert calls < attempts <= calls + RETRY_MAX_TOKENS // 2
    # Once the server recovers, calls succeed at once; successes earn the budget back.
    assert fresh.predict(tiny_repo.baseline, _x()).version == 1


def test_deadline_exceeded_is_504(tiny_repo, tfserving_server, tfserving_fake):
    p = TFServingPredictor(tfserving_server, deadline_seconds=0.2, model_repo=tiny_repo.path)
    try:
        with tfserving_fake.faults(delay_seconds=0.6), pytest.raises(BackendTimeout) as caught:
            p.model_info(tiny_repo.baseline)
        assert caught.value.http_status == 504
    finally:
        p.close()


def test_not_found_from_the_server_is_404(fresh, tfserving_fake, tiny_repo):
    with tfserving_fake.faults(status=grpc.StatusCode.NOT_FOUND), pytest.raises(ModelNotFound):
        fresh.predict(tiny_repo.baseline, _x())


def _closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


def test_server_down_through_the_app(tiny_repo):
    address = _closed_port()
    predictor = TFServingPredictor(address, deadline_seconds=1, model_repo=tiny_repo.path, retries=1, backoff_seconds=0.01)
    config = ServiceConfig(model_repo=tiny_repo.path, tf_serving=address)
    client = create_app(config, predictor=predictor).test_client()
    response = client.post(f"/api/v1/models/{tiny_repo.baseline}/predict", data=images.png(), content_type="image/png")
    assert (response.status_code, response.json["error"]["code"]) == (503, "backend_unavailable")
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200  # the page says the backend is down instead of failing
    exposition = client.application.extensions["medrobust"].metrics.exposition().decode()
    assert 'medrobust_backend_errors_total{backend="tfserving",code="UNAVAILABLE"}' in exposition
    predictor.close()


def test_timeout_through_the_app(tiny_repo, tfserving_server, tfserving_fake):
    predictor = TFServingPredictor(tfserving_server, deadline_seconds=0.2, model_repo=tiny_repo.path)
    client = create_app(ServiceConfig(model_repo=tiny_repo.path), predictor=predictor).test_client()
    with tfserving_fake.faults(delay_seconds=0.6):
        response = client.post(f"/api/v1/models/{tiny_repo.baseline}/predict", data=images.png(), content_type="image/png")
    assert (response.status_code, response.json["error"]["code"]) == (504, "backend_timeout")
    predictor.close()


def test_cards_from_model_metadata_without_a_repository(tiny_repo, tfserving_server):
    p = TFServingPredictor(tfserving_server, deadline_seconds=10, models=tiny_repo.models)
    try:
        card = p.model_card(tiny_repo.attention)
        assert card["input_size"] == [64, 64] and card["num_classes"] == 3 and card["attention"] is True
        assert card["signatures"]["vjp"]["inputs"] == ["image", "cotangent"]
        assert p.gradcam(tiny_repo.attention, _x()).attention_map.shape == (1, 64, 64)
        assert p.vjp(tiny_repo.baseline, _x(), np.ones((1, 3), np.float32)).gradient.shape == (1, 64, 64, 3)
    finally:
        p.close()
