"""Version labels (`stable`, `canary`) set in the repository's models.config, on both backends and the API."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from service.app import create_app
from tests.integration import service_images as images
from tests.integration.serving import BACKENDS
from training.contract import repository
from training.contract.config import ServiceConfig
from training.contract.errors import ModelNotFound


@pytest.fixture(scope="module")
def labelled_repo(tiny_repo, tmp_path_factory):
    """The tiny repository with a second version of the baseline, labelled by hand: stable -> 1, canary -> 2."""
    repo = tmp_path_factory.mktemp("labelled") / "repo"
    shutil.copytree(tiny_repo.path, repo)
    shutil.copytree(repo / tiny_repo.baseline / "1", repo / tiny_repo.baseline / "2")
    repository.write_models_config(repo)
    path = repo / repository.MODELS_CONFIG
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    for entry in config.model_config_list.config:
        if entry.name == tiny_repo.baseline:
            entry.version_labels.update({"stable": 1, "canary": 2})
    path.write_text(text_format.MessageToString(config))
    repository.write_models_config(repo)  # as the next export would: the labels must survive it
    return repo


@pytest.fixture(scope="module", params=BACKENDS)
def labelled(request, labelled_repo):
    if request.param == "embedded":
        from service.embedded import EmbeddedPredictor

        predictor = EmbeddedPredictor(labelled_repo, poll_seconds=3600)
        yield predictor
        predictor.close()
        return
    from service.tfserving import TFServingPredictor
    from tests.integration.tfserving_fake import FakeTFServing

    fake = FakeTFServing(labelled_repo / repository.MODELS_CONFIG)
    fake.start()
    predictor = TFServingPredictor(fake.address, deadline_seconds=30, model_repo=labelled_repo)
    yield predictor
    predictor.close()
    fake.stop()


def _x() -> np.ndarray:
    return np.full((1, 64, 64, 3), 0.5, np.float32)


@pytest.mark.parametrize(("version", "answered"), [("stable", 1), ("canary", 2), (None, 2), ("latest", 2), (1, 1)])
def test_a_label_pins_the_version_it_names(labelled, tiny_repo, version, answered):
    assert labelled.predict(tiny_repo.baseline, _x(), version=version).version == answered
    assert labelled.gradcam(tiny_repo.baseline, _x(), version=version).version == answered
    assert labelled.model_card(tiny_repo.baseline, version)["name"] == tiny_repo.baseline


def test_an_unknown_label_is_not_found(labelled, tiny_repo):
    with pytest.raises(ModelNotFound, match="no version labelled 'retired'") as caught:
        labelled.predict(tiny_repo.baseline, _x(), version="retired")
    assert caught.value.http_status == 404
    with pytest.raises(ModelNotFound):  # labels belong to one model, not to the repository
        labelled.predict(tiny_repo.attention, _x(), version="stable")


def test_the_api_answers_for_the_labelled_version(labelled, labelled_repo, tiny_repo):
    client = create_app(ServiceConfig(model_repo=labelled_repo), predictor=labelled).test_client()
    path = f"/api/v1/models/{tiny_repo.baseline}/predict"
    for label, version in (("stable", 1), ("canary", 2)):
        response = client.post(f"{path}?version={label}", data=images.png(), content_type="image/png")
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["version"] == version
    missing = client.post(f"{path}?version=retired", data=images.png(), content_type="image/png")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "model_not_found"
