"""TF Serving behind a headless Service: calls balanced round robin over the replicas, and answers
labelled only with the card of the version that answered, while a rollout leaves replicas on
different versions.

Two stand-ins play two replicas of the baseline mid-rollout: `old` still holds version 1 only, `new`
has picked up version 2, whose card names the classes differently (so a label drawn from the wrong
card is visible). The client reaches both through one target, as `dns:///tf-serving:8500` reaches
every pod behind a headless Service; gRPC's static `ipv4:` list goes through the same round-robin
policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from medrobust.compose import build_predictor
from service.app import create_app
from service.tfserving import VERSION_MISS_ATTEMPTS, TFServingPredictor
from tests.integration import service_images as images
from tests.integration.tfserving_fake import FakeTFServing
from training.contract import repository
from training.contract.card import CARD_PATH
from training.contract.config import ServiceConfig, read_config
from training.contract.errors import BackendUnavailable, PredictorError


def _x() -> np.ndarray:
    return np.full((1, 64, 64, 3), 0.5, np.float32)


def _link_tree(source: Path, target: Path, *, leave_out: Path | None = None) -> None:
    """`target` as a tree of symlinks to `source`'s files (a version costs no copy of its variables),
    but for `leave_out` (relative), left for the caller to write."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_dir() or relative == leave_out:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).symlink_to(path)


@pytest.fixture(scope="module")
def rollout_repo(tiny_repo, tmp_path_factory) -> Path:
    """The baseline's version 1 and a version 2 of the same graph whose card renames every class."""
    repo = tmp_path_factory.mktemp("rollout") / "repo"
    model = tiny_repo.baseline
    source = tiny_repo.path / model / "1"
    _link_tree(source, repo / model / "1")
    _link_tree(source, repo / model / "2", leave_out=CARD_PATH)
    card = repository.read_card(source)
    card.update(version=2, class_names=[f"{name} (v2)" for name in card["class_names"]])
    (repo / model / "2" / CARD_PATH).write_text(json.dumps(card))
    repository.write_models_config(repo)
    return repo


def _replica(repo: Path, model: str, versions: list[int], config_path: Path) -> FakeTFServing:
    """A TF Serving replica that has loaded `versions` of `model`."""
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name=model, base_path=str(repo / model), model_platform="tensorflow")
    entry.model_version_policy.specific.versions.extend(versions)
    config_path.write_text(text_format.MessageToString(config))
    replica = FakeTFServing(config_path)
    replica.start()
    return replica


@pytest.fixture(scope="module")
def replicas(rollout_repo, tiny_repo, tmp_path_factory):
    """(old, new): the replica still on version 1, and the one that has loaded version 2 beside it."""
    folder = tmp_path_factory.mktemp("replicas")
    old = _replica(rollout_repo, tiny_repo.baseline, [1], folder / "old.config")
    new = _replica(rollout_repo, tiny_repo.baseline, [1, 2], folder / "new.config")
    yield old, new
    old.stop()
    new.stop()


def _both(replicas) -> str:
    """One gRPC target resolving to both replicas."""
    old, new = replicas
    return f"ipv4:{old.address},{new.address}"


def _class_names(repo: Path, model: str, version: int) -> list[str]:
    return list(repository.read_card(repo / model / str(version))["class_names"])


def test_calls_are_spread_over_every_replica(replicas, rollout_repo, tiny_repo):
    # One channel per process used to pin the process to the first address it connected to.
    predictor = TFServingPredictor(_both(replicas), deadline_seconds=30, model_repo=rollout_repo)
    before = [r.calls["Predict"] for r in replicas]
    try:
        for _ in range(20):
            assert predictor.predict(tiny_repo.baseline, _x(), version=1).version == 1
    finally:
        predictor.close()
    received = [r.calls["Predict"] - b for r, b in zip(replicas, before)]
    assert sum(received) == 20 and min(received) >= 5, f"Predicts per replica (old, new): {received}"


def test_mid_rollout_every_answer_is_labelled_with_the_card_of_the_version_that_answered(replicas, rollout_repo, tiny_repo):
    model = tiny_repo.baseline
    old, _ = replicas
    predictor = TFServingPredictor(_both(replicas), deadline_seconds=30, model_repo=rollout_repo, status_ttl_seconds=3600)
    try:
        # The front end resolves "latest" from whichever replica answers its status call; make it
        # the new one, so that the old replica, which lacks version 2, is asked too.
        for _ in range(10):
            if predictor.model_info(model).latest == 2:
                break
        else:
            pytest.fail("no status call reached the replica holding version 2: calls are not balanced")
        client = create_app(ServiceConfig(model_repo=rollout_repo), predictor=predictor).test_client()
        asked_old = old.calls["Predict"]
        for _ in range(6):
            response = client.post(f"/api/v1/models/{model}/predict?explain=none", data=images.png(), content_type="image/png")
            assert response.status_code == 200, response.get_json()
            body = response.get_json()
            names = _class_names(rollout_repo, model, body["version"])
            assert body["version"] == 2 and sorted(body["probabilities"]) == sorted(names)
            assert body["label"] == names[body["class_index"]]
        # The old replica was asked (and answered NOT_FOUND for version 2): the skew was real.
        assert old.calls["Predict"] > asked_old
    finally:
        predictor.close()


def test_an_answer_from_another_version_than_pinned_is_refused(replicas, rollout_repo, tiny_repo):
    _, new = replicas
    predictor = TFServingPredictor(new.address, deadline_seconds=30, model_repo=rollout_repo)
    client = create_app(ServiceConfig(model_repo=rollout_repo), predictor=predictor).test_client()
    try:
        with new.ignoring_pins():
            with pytest.raises(PredictorError) as caught:
                predictor.predict(tiny_repo.baseline, _x(), version=1)
            response = client.post(
                f"/api/v1/models/{tiny_repo.baseline}/predict?version=1&explain=none", data=images.png(), content_type="image/png"
            )
        error = caught.value
        assert (error.code, error.http_status) == ("version_mismatch", 502)
        assert error.details == {"expected_version": 1, "answered_version": 2}
        assert "expected the answer of version 1, whose model card labels it, got version 2" in error.message
        assert response.status_code == 502 and response.get_json()["error"]["code"] == "version_mismatch"
        assert "label" not in response.get_json()
    finally:
        predictor.close()


def test_a_version_replicas_lack_is_tried_on_others_then_503_while_tf_serving_reports_it(replicas, rollout_repo, tiny_repo):
    _, new = replicas
    predictor = TFServingPredictor(new.address, deadline_seconds=30, model_repo=rollout_repo)
    try:
        assert predictor.model_info(tiny_repo.baseline).latest == 2
        before = dict(new.calls)
        # Every Predict meets a replica without the version, while the status still reports it.
        with new.faults(status=grpc.StatusCode.NOT_FOUND, methods=("Predict",)), pytest.raises(BackendUnavailable) as caught:
            predictor.predict(tiny_repo.baseline, _x())
        assert new.calls["Predict"] - before["Predict"] == VERSION_MISS_ATTEMPTS
        assert caught.value.http_status == 503 and caught.value.details == {"grpc_code": "NOT_FOUND"}
        assert f"TF Serving reports version 2 of {tiny_repo.baseline!r} AVAILABLE" in caught.value.message
        # The cached status was dropped: the next call resolves the version afresh.
        status_calls = new.calls["GetModelStatus"]
        assert predictor.predict(tiny_repo.baseline, _x()).version == 2
        assert new.calls["GetModelStatus"] == status_calls + 1
    finally:
        predictor.close()


def test_a_dns_target_from_the_configuration_reaches_tf_serving(replicas, rollout_repo, tiny_repo):
    _, new = replicas
    port = new.address.rpartition(":")[2]
    environ = {"MEDROBUST_TF_SERVING": f"dns:///localhost:{port}", "MEDROBUST_MODEL_REPO": str(rollout_repo)}
    config = read_config(ServiceConfig, {}, environ)
    predictor = build_predictor(config, start_polling=False)
    try:
        assert isinstance(predictor, TFServingPredictor) and predictor.address == f"dns:///localhost:{port}"
        assert predictor.predict(tiny_repo.baseline, _x(), version=1).version == 1
    finally:
        predictor.close()
