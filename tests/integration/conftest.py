"""Fixtures for tests that need served models: a TF Serving stand-in and a predictor per backend.

`predictor` is parametrised over both backends, so a test written once runs against the embedded
loader and against TF Serving's gRPC API (the audit's tests reuse it the same way).
"""

from __future__ import annotations

import pytest

from tests.integration.serving import BACKENDS


@pytest.fixture(scope="session")
def tfserving_fake(tiny_repo):
    """The FakeTFServing object behind `tfserving_server` (for injecting delays and failures)."""
    from tests.integration.tfserving_fake import FakeTFServing

    fake = FakeTFServing(tiny_repo.path / "models.config")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def tfserving_server(tfserving_fake) -> str:
    """"127.0.0.1:PORT" of a gRPC server serving `tiny_repo` with TF Serving's protos."""
    return tfserving_fake.address


@pytest.fixture(scope="session")
def embedded_predictor(tiny_repo):
    from service.embedded import EmbeddedPredictor

    predictor = EmbeddedPredictor(tiny_repo.path, max_loaded=4, poll_seconds=3600)
    yield predictor
    predictor.close()


@pytest.fixture(scope="session")
def tfserving_predictor(tiny_repo, tfserving_server):
    from service.tfserving import TFServingPredictor

    predictor = TFServingPredictor(tfserving_server, deadline_seconds=30, model_repo=tiny_repo.path)
    yield predictor
    predictor.close()


@pytest.fixture(scope="session", params=BACKENDS)
def predictor(request):
    """A Predictor over `tiny_repo`, once per backend ("embedded", "tfserving"); do not close it."""
    return request.getfixturevalue(f"{request.param}_predictor")
