"""The exported SavedModel is the contract between training, serving and audit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from tests.project import SHARED_DATA  # noqa: E402
from training.contract import repository  # noqa: E402
from training.export import export_model  # noqa: E402
from training.models import build_model  # noqa: E402

SIZE = 64
CLASSES = ("benign", "malignant", "other")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Untrained baseline and attention ResNet-50s, exported; the Keras models kept to compare."""
    keras.utils.set_random_seed(3)
    repo = tmp_path_factory.mktemp("contract-repo")
    out = {}
    for attention in (False, True):
        model = build_model("resnet50", attention=attention, num_classes=3, image_size=SIZE)
        result = export_model(model, repo, task="demo", class_names=CLASSES, dataset={"kind": "test"})
        out[attention] = (model, result, tf.saved_model.load(str(result.path)))
    return repo, out


@pytest.fixture(scope="module")
def images():
    return tf.constant(np.random.default_rng(0).uniform(size=(3, SIZE, SIZE, 3)).astype("float32"))


@pytest.mark.parametrize("attention", [False, True])
def test_serving_default_agrees_with_keras(exported, images, attention):
    model, _, loaded = exported[1][attention]
    out = loaded.signatures["serving_default"](image=images)
    want = model(images, training=False).numpy()
    np.testing.assert_allclose(out["logits"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
    assert out["class_id"].dtype == tf.int64
    np.testing.assert_array_equal(out["class_id"], want.argmax(-1))


@pytest.mark.parametrize("attention", [False, True])
def test_vjp_equals_a_gradient_tape_gradient(exported, images, attention):
    model, _, loaded = exported[1][attention]
    cotangent = tf.constant(np.random.default_rng(1).normal(size=(3, 3)).astype("float32"))
    out = loaded.signatures["vjp"](image=images, cotangent=cotangent)
    with tf.GradientTape() as tape:
        tape.watch(images)
        total = tf.reduce_sum(model(images, training=False) * cotangent)
    want = tape.gradient(total, images).numpy()
    assert float(np.abs(want).max()) > 0
    np.testing.assert_allclose(out["gradient"], want, rtol=1e-3, atol=1e-6 * float(np.abs(want).max()))


def _independent_gradcam(model, layer_name, images, *, resize=True):
    """Grad-CAM as Selvaraju et al. define it, written here apart from training.export (at the
    layer's own resolution when not `resize`)."""
    sub = keras.Model(model.input, [model.get_layer(layer_name).output, model.output])
    with tf.GradientTape() as tape:
        feats, logits = sub(images, training=False)
        top = tf.argmax(logits, -1)
        score = tf.gather(logits, top, axis=1, batch_dims=1)
    grads = tape.gradient(score, feats).numpy()
    feats = feats.numpy()
    maps = []
    for f, g in zip(feats, grads):
        alpha = g.mean(axis=(0, 1))
        cam = np.maximum((f * alpha).sum(-1), 0)
        if resize:
            cam = tf.image.resize(cam[None, ..., None], (SIZE, SIZE), method="bilinear").numpy()[0, ..., 0]
        maps.append(cam / (cam.max() + 1e-8))
    return np.stack(maps)


@pytest.mark.parametrize("attention", [False, True])
def test_gradcam_heatmap_matches_an_independent_gradcam(exported, images, attention):
    model, result, loaded = exported[1][attention]
    out = loaded.signatures["gradcam"](image=images)
    heat = out["heatmap"].numpy()
    assert heat.shape == (3, SIZE, SIZE) and heat.min() >= 0 and heat.max() <= 1
    want = _independent_gradcam(model, result.card["gradcam_layer"], images)
    np.testing.assert_allclose(heat, want, atol=2e-3)
    grid = out["heatmap_grid"].numpy()
    assert grid.shape == (3, *result.card["gradcam_grid"]) and grid.min() >= 0 and grid.max() <= 1
    np.testing.assert_allclose(grid, _independent_gradcam(model, result.card["gradcam_layer"], images, resize=False), atol=2e-3)
    assert ("attention_map" in out) is attention
    if attention:
        att = out["attention_map"].numpy()
        assert att.shape == (3, SIZE, SIZE) and att.min() >= 0 and att.max() <= 1 + 1e-6


def test_model_card_and_warmup_records(exported):
    _, result, _ = exported[1][True]
    card = json.loads((result.path / "assets.extra" / "model_card.json").read_text())
    assert card["name"] == "demo-resnet50-attention"
    assert (card["task"], card["backbone"], card["attention"]) == ("demo", "resnet50", True)
    assert card["class_names"] == list(CLASSES) and card["input_size"] == [SIZE, SIZE]
    # At 64 px the last stage (conv5, stride 32) is 2x2: Grad-CAM reads the third stage's 8x8.
    assert (card["gradcam_layer"], card["gradcam_grid"]) == ("conv3_block4_out", [8, 8])
    assert "gradcam_note" not in card
    assert card["signatures"]["gradcam"]["outputs"] == ["probabilities", "class_id", "heatmap", "heatmap_grid", "attention_map"]
    assert card["dataset"] == {"kind": "test"} and card["version"] == result.version
    for key in ("exported_at", "code_version", "metrics", "training", "signatures"):
        assert key in card
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(str(result.path / "assets.extra" / "tf_serving_warmup_requests")))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default", "gradcam", "vjp"]
    image = tf.make_ndarray(logs[0].predict_log.request.inputs["image"])
    assert image.shape == (1, SIZE, SIZE, 3)


def test_models_config_parses_with_tf_serving_protos(exported):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    repo, _ = exported
    config = text_format.Parse((repo / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == {"demo-resnet50-attention", "demo-resnet50-baseline"}
    assert entries["demo-resnet50-baseline"].base_path == str((repo / "demo-resnet50-baseline").resolve())
    assert repository.models_config_text(repo, "/models").count('base_path: "/models/demo-') == 2


def test_versions_increase_and_failed_exports_leave_nothing(exported, monkeypatch):
    repo, models = exported
    model, first, _ = models[False]
    second = export_model(model, repo, task="demo", class_names=CLASSES)
    assert second.version == first.version + 1
    assert repository.versions_of(repo / "demo-resnet50-baseline")[-2:] == (first.version, second.version)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_model(model, repo, task="demo", class_names=CLASSES)
    assert repository.versions_of(repo / "demo-resnet50-baseline")[-1] == second.version
    assert not [p for p in repo.iterdir() if p.name.startswith(".staging-")]


def test_card_rejects_wrong_class_names(exported, tmp_path):
    model, _, _ = exported[1][False]
    with pytest.raises(ValueError, match="expected 3 class names for a 3-class model, got 2"):
        export_model(model, tmp_path, task="demo", class_names=["a", "b"])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # loads and checks every signature of every version: ~25 s
def test_shared_contract_checker_accepts_the_repository(exported):
    checker = SHARED_DATA.parent / "tools" / "check_contract.py"
    if not checker.is_file():
        pytest.skip(f"{checker} is absent")
    repo, _ = exported
    run = subprocess.run([sys.executable, str(checker), str(repo)], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
