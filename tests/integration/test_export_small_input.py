"""At 32 px ResNet-50's last feature map is 1x1: the smallest input `medrobust up` trains at.

Soft attention over one position is uniform, so the attention map is constant. The exported
`gradcam` signature once turned that constant into 0/0 = NaN (the graph optimiser regrouped the
epsilon meant to prevent it), and every upload to the demo's attentive model answered 500.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from service.app import create_app  # noqa: E402
from training.contract.config import ServiceConfig  # noqa: E402
from training.export import export_model  # noqa: E402
from training.models import build_model  # noqa: E402

SIZE = 32
CLASSES = ("ring", "spot", "streak")


@pytest.fixture(scope="module")
def repo_32(tmp_path_factory):
    keras.utils.set_random_seed(5)
    repo = tmp_path_factory.mktemp("repo-32px")
    model = build_model("resnet50", attention=True, num_classes=len(CLASSES), image_size=SIZE)
    export_model(model, repo, task="demo", class_names=CLASSES, dataset={"kind": "test"})
    return repo


def test_gradcam_maps_are_finite_and_in_range_at_32px(repo_32) -> None:
    loaded = tf.saved_model.load(str(repo_32 / "demo-resnet50-attention" / "1"))
    images = tf.constant(np.random.default_rng(0).uniform(size=(2, SIZE, SIZE, 3)).astype("float32"))
    out = loaded.signatures["gradcam"](image=images)
    for name in ("heatmap", "attention_map"):
        values = out[name].numpy()
        assert values.shape == (2, SIZE, SIZE)
        assert np.isfinite(values).all(), f"{name}: {int((~np.isfinite(values)).sum())} non-finite values"
        assert values.min() >= 0.0 and values.max() <= 1.0
    # One position, one weight: uniform attention locates nothing, and says so with an all-zero map.
    assert float(out["attention_map"].numpy().max()) == 0.0
    # Grad-CAM reads the shallowest allowed layer instead, and the card says its grid is small.
    assert out["heatmap_grid"].shape == (2, 4, 4)


def test_the_card_states_the_small_gradcam_grid(repo_32) -> None:
    import json

    card = json.loads((repo_32 / "demo-resnet50-attention" / "1" / "assets.extra" / "model_card.json").read_text())
    assert (card["gradcam_layer"], card["gradcam_grid"]) == ("conv3_block4_out", [4, 4])
    assert card["gradcam_note"].startswith("4x4 positions at 32 px: no resnet50 layer allowed for Grad-CAM gives 7x7")


def test_the_front_end_answers_both_overlays_at_32px(repo_32) -> None:
    from service.embedded import EmbeddedPredictor

    predictor = EmbeddedPredictor(repo_32, max_loaded=1, poll_seconds=3600)
    try:
        client = create_app(ServiceConfig(model_repo=repo_32), predictor=predictor).test_client()
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
        answer = client.post(
            "/api/v1/models/demo-resnet50-attention/predict", data=buffer.getvalue(), content_type="image/png"
        )
        assert answer.status_code == 200, answer.get_data(as_text=True)
        body = answer.get_json()
        assert body["overlay_png"] and body["attention_png"]
        assert "overlay_omitted" not in body
    finally:
        predictor.close()
