"""Batches larger than TF Serving's `max_batch_size` (deploy/tf-serving/batching.config): refused by
the server as TF Serving refuses them, and split by the client into requests the server accepts."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from audit.foolbox_model import ServedModel
from medrobust.compose import build_predictor
from service.tfserving import TFServingPredictor
from tests.integration.tfserving_fake import FakeTFServing
from tests.tf_serving_protos import DEPLOYED_BATCHING, batching_parameters
from training.contract import repository
from training.contract.config import AttackConfig, AuditConfig, ServiceConfig, default_of, read_config
from training.contract.errors import InvalidInput

AUDIT_BATCH = default_of(AttackConfig, "batch_size")  # what `medrobust audit` sends per call: 64
DEPLOYED_LIMIT = batching_parameters(DEPLOYED_BATCHING.read_text()).max_batch_size.value  # 32


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 64, 64, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def unbatched(tiny_repo, tmp_path_factory):
    """TF Serving without --enable_batching (no limit), serving the baseline only (a load is the cost)."""
    config = text_format.Parse((tiny_repo.path / repository.MODELS_CONFIG).read_text(), model_server_config_pb2.ModelServerConfig())
    keep = [c for c in config.model_config_list.config if c.name == tiny_repo.baseline]
    del config.model_config_list.config[:]
    config.model_config_list.config.extend(keep)
    path = tmp_path_factory.mktemp("unbatched") / "models.config"
    path.write_text(text_format.MessageToString(config))
    fake = FakeTFServing(path, batching_config=None)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def clients(tiny_repo, tfserving_fake, unbatched):
    """(a client with the default limit against the deployed batching, a whole-batch client against no limit)."""
    split = TFServingPredictor(tfserving_fake.address, deadline_seconds=60, model_repo=tiny_repo.path)
    whole = TFServingPredictor(unbatched.address, deadline_seconds=60, model_repo=tiny_repo.path, max_batch_size=None)
    yield split, whole
    split.close()
    whole.close()


def test_the_default_limit_is_the_deployed_max_batch_size():
    assert DEPLOYED_LIMIT == 32 < AUDIT_BATCH
    assert default_of(ServiceConfig, "tf_serving_max_batch") == default_of(AuditConfig, "tf_serving_max_batch") == DEPLOYED_LIMIT


@pytest.mark.parametrize("config", [ServiceConfig, AuditConfig])
def test_a_limit_below_one_is_refused_naming_the_variable(config):
    environ = {"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_TF_SERVING_MAX_BATCH": "0"}
    with pytest.raises(ValueError, match="^MEDROBUST_TF_SERVING_MAX_BATCH: expected at least 1, got 0$"):
        read_config(config, {}, environ)


@pytest.mark.parametrize(("size", "refused"), [(DEPLOYED_LIMIT, False), (DEPLOYED_LIMIT + 1, True), (AUDIT_BATCH, True)])
def test_the_server_refuses_a_batch_over_its_limit_as_tf_serving_does(tiny_repo, tfserving_fake, size, refused):
    unsplit = TFServingPredictor(tfserving_fake.address, deadline_seconds=60, model_repo=tiny_repo.path, max_batch_size=None)
    try:
        if not refused:
            assert unsplit.predict(tiny_repo.baseline, _batch(size)).logits.shape == (size, 3)
            return
        with pytest.raises(InvalidInput) as caught:
            unsplit.predict(tiny_repo.baseline, _batch(size))
        assert caught.value.message.endswith(
            f"TF Serving answered INVALID_ARGUMENT: Task size {size} is larger than maximum input batch size {DEPLOYED_LIMIT}"
        )
        assert (caught.value.http_status, caught.value.details) == (400, {"grpc_code": "INVALID_ARGUMENT"})
    finally:
        unsplit.close()


def test_an_audit_sized_predict_is_split_and_equals_the_unsplit_answer(clients, tiny_repo, tfserving_fake):
    split, whole = clients
    images = _batch(AUDIT_BATCH)
    before = tfserving_fake.calls["Predict"]
    got = split.predict(tiny_repo.baseline, images)
    assert tfserving_fake.calls["Predict"] - before == AUDIT_BATCH // DEPLOYED_LIMIT
    want = whole.predict(tiny_repo.baseline, images)
    assert got.version == want.version == 1
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got.class_id, want.class_id)


def test_a_vjp_batch_is_split_with_its_cotangent_and_equals_the_unsplit_answer(clients, tiny_repo, tfserving_fake):
    _, whole = clients
    split = TFServingPredictor(tfserving_fake.address, deadline_seconds=60, model_repo=tiny_repo.path, max_batch_size=8)
    images = _batch(20, seed=1)  # 8 + 8 + 4: gradients are the costly call, so a small batch with a smaller limit
    cotangent = np.random.default_rng(2).standard_normal((20, 3)).astype(np.float32)
    before = tfserving_fake.calls["Predict"]
    try:
        got = split.vjp(tiny_repo.baseline, images, cotangent)
    finally:
        split.close()
    assert tfserving_fake.calls["Predict"] - before == 3
    want = whole.vjp(tiny_repo.baseline, images, cotangent)
    assert got.gradient.shape == (20, 64, 64, 3)
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-4, atol=1e-5)
    # A convolution's float32 sums are ordered differently for a batch of 8 than for one of 20,
    # so tiny elements differ by a few 1e-6 (CI saw 4.8e-6). The tolerance scales with the
    # gradient: a cotangent sent with the wrong chunk moves elements by the gradient's own size.
    np.testing.assert_allclose(got.gradient, want.gradient, rtol=1e-3, atol=1e-3 * float(np.abs(want.gradient).max()))


def test_a_ragged_gradcam_batch_is_split_and_equals_the_unsplit_answer(clients, tiny_repo):
    split, whole = clients
    images = _batch(DEPLOYED_LIMIT + 8, seed=3)  # 32 + 8: the last chunk is short
    got, want = (c.gradcam(tiny_repo.baseline, images) for c in (split, whole))
    assert got.heatmap.shape == (DEPLOYED_LIMIT + 8, 64, 64) and got.attention_map is None
    np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.heatmap, want.heatmap, rtol=1e-3, atol=1e-4 * float(np.abs(want.heatmap).max()))
    np.testing.assert_array_equal(got.class_id, want.class_id)


def test_every_chunk_is_answered_by_the_version_the_batch_was_resolved_to(tiny_repo, tfserving_fake):
    client = TFServingPredictor(tfserving_fake.address, deadline_seconds=60, model_repo=tiny_repo.path, max_batch_size=16)
    try:
        with tfserving_fake.rollout(tiny_repo.baseline, after_predicts=1) as answered:
            assert client.predict(tiny_repo.baseline, _batch(40)).version == 1
            assert answered == [(1, 16), (1, 16), (1, 8)]
            # The pick-up did happen: once the status is asked again, an unpinned request is
            # resolved to the new version and answered by it.
            assert client.model_info(tiny_repo.baseline).latest == 2
            assert client.predict(tiny_repo.baseline, _batch(1)).version == 2
    finally:
        client.close()


def test_the_audits_setting_reaches_its_predictor(tiny_repo, tfserving_fake):
    flags = {"tf_serving": tfserving_fake.address, "model_repo": str(tiny_repo.path)}
    config = read_config(AuditConfig, flags, {})
    predictor = build_predictor(config, start_polling=False)
    try:
        served = ServedModel(predictor, tiny_repo.baseline, 1, batch_size=config.attack.batch_size)
        assert served.logits(_batch(AUDIT_BATCH)).shape == (AUDIT_BATCH, 3)
    finally:
        predictor.close()

    config = read_config(AuditConfig, flags, {"MEDROBUST_TF_SERVING_MAX_BATCH": str(DEPLOYED_LIMIT + 1)})
    predictor = build_predictor(config, start_polling=False)
    try:
        assert predictor.max_batch_size == DEPLOYED_LIMIT + 1
        with pytest.raises(InvalidInput, match=f"Task size {DEPLOYED_LIMIT + 1} is larger than maximum input batch size"):
            predictor.predict(tiny_repo.baseline, _batch(AUDIT_BATCH))
    finally:
        predictor.close()
