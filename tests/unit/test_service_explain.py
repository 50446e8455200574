"""explain_upload on a stand-in backend: each overlay is the right map in the right colours, at
every upload size (both sides of the size from which the two overlays are encoded at once)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import service.explain
from service.errors import ApiError
from service.explain import OVERLAY_MAX_SIDE, PARALLEL_OVERLAY_MIN_PIXELS, decode_slot, explain_upload
from service.overlay import ATTENTION_COLORMAP, HEATMAP_COLORMAP, overlay_png
from service.predictor import GradcamResult, Prediction

CARD = {"task": "demo", "class_names": ["benign", "malignant"], "input_size": [32, 32, 3],
        "gradcam_layer": "conv3_block4_out", "gradcam_grid": [4, 4]}


class MapsPredictor:
    """Answers fixed, different Grad-CAM and attention maps, as an attentive model would."""

    def __init__(self, attention: bool):
        rng = np.random.default_rng(1)
        self.heatmap = rng.random((1, 32, 32), dtype=np.float32)
        self.attention = rng.random((1, 32, 32), dtype=np.float32) if attention else None
        self.grid = rng.random((1, 4, 4), dtype=np.float32)

    def gradcam(self, model, images, *, version=None):
        assert images.shape == (1, 32, 32, 3)
        return GradcamResult(
            model, 3, np.array([[0.2, 0.8]], np.float32), np.array([1]), self.heatmap, self.attention, self.grid
        )

    def predict(self, model, images, *, version=None):
        return Prediction(model, 3, np.zeros((1, 2), np.float32), np.array([[0.6, 0.4]], np.float32), np.array([0]))

    def model_card(self, model, version=None):
        return CARD


def _slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(1)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("side", [16, 96, 128, 300], ids=lambda s: f"{s}px")
def test_attentive_model_gets_both_overlays_in_their_colours(side: int) -> None:
    rgb = np.random.default_rng(side).integers(0, 256, (side, side + 7, 3), dtype=np.uint8)
    backend = MapsPredictor(attention=True)
    result = explain_upload(backend, "m", CARD, _png(rgb), max_pixels=10**8, decode_slots=_slots())
    assert result.overlay_png == overlay_png(rgb, backend.heatmap[0], colormap=HEATMAP_COLORMAP)
    assert result.attention_png == overlay_png(rgb, backend.attention[0], colormap=ATTENTION_COLORMAP)
    assert result.overlay_png != result.attention_png
    assert (result.label, result.class_index, result.version) == ("malignant", 1, 3)


def test_the_sizes_cover_both_paths() -> None:
    assert 16 * 23 < PARALLEL_OVERLAY_MIN_PIXELS <= 128 * 135


def test_baseline_model_gets_no_attention_overlay() -> None:
    rgb = np.full((200, 200, 3), 90, np.uint8)
    backend = MapsPredictor(attention=False)
    result = explain_upload(backend, "m", CARD, _png(rgb), max_pixels=10**8, decode_slots=_slots())
    assert result.overlay_png == overlay_png(rgb, backend.heatmap[0])
    assert result.attention_png is None


def test_without_explanation_no_overlays() -> None:
    result = explain_upload(MapsPredictor(attention=True), "m", CARD, _png(np.zeros((200, 200, 3), np.uint8)),
                            explain=False, max_pixels=10**8, decode_slots=_slots())
    assert (result.overlay_png, result.attention_png, result.label) == (None, None, "benign")


def test_an_overlay_error_reaches_the_caller(monkeypatch) -> None:
    """A failure in the pool thread is raised in the request, not lost with the thread."""
    import service.explain

    def broken(rgb, heatmap, *, colormap):
        if colormap == ATTENTION_COLORMAP:
            raise RuntimeError("encoder failed")
        return overlay_png(rgb, heatmap, colormap=colormap)

    monkeypatch.setattr(service.explain, "overlay_png", broken)
    with pytest.raises(RuntimeError, match="encoder failed"):
        explain_upload(MapsPredictor(attention=True), "m", CARD, _png(np.zeros((200, 200, 3), np.uint8)), max_pixels=10**8, decode_slots=_slots())


BAD_MAPS = [
    ("attention", np.full((1, 32, 32), np.nan, np.float32), "attention map has 1024 of 1024 values NaN or infinite"),
    ("heatmap", np.full((1, 32, 32), np.inf, np.float32), "Grad-CAM heatmap has 1024 of 1024 values NaN or infinite"),
    ("heatmap", np.zeros((1, 8, 8), np.float32), "Grad-CAM heatmap has shape [8, 8], expected [32, 32]"),
]


@pytest.mark.parametrize("side", [16, 300], ids=lambda s: f"{s}px")
@pytest.mark.parametrize(("which", "values", "reason"), BAD_MAPS, ids=["nan-attention", "inf-heatmap", "wrong-shape"])
def test_a_bad_map_is_left_out_with_its_reason(side, which, values, reason) -> None:
    """The prediction is still answered; only the unusable map's overlay is omitted, and why is said."""
    rgb = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    backend = MapsPredictor(attention=True)
    setattr(backend, which, values)
    result = explain_upload(backend, "m", CARD, _png(rgb), max_pixels=10**8, decode_slots=_slots())
    assert (result.label, result.class_index) == ("malignant", 1)
    key, kept = ("attention", "overlay") if which == "attention" else ("overlay", "attention")
    assert result.omitted == {key: f"the model's {reason}"}
    good = backend.attention if which != "attention" else backend.heatmap
    colormap = ATTENTION_COLORMAP if kept == "attention" else HEATMAP_COLORMAP
    drawn = result.attention_png if kept == "attention" else result.overlay_png
    assert drawn == overlay_png(rgb, good[0], colormap=colormap)
    assert (result.attention_png if key == "attention" else result.overlay_png) is None


class CardPredictor(MapsPredictor):
    backend_name = "stand-in"


def test_the_label_comes_from_the_card_of_the_version_that_answered() -> None:
    """A rollout between reading the card and the call: version 3 answered, so its class names label it."""

    class RolledOut(MapsPredictor):
        def model_card(self, model, version=None):
            assert version == 3, "the card asked for must be the answering version's"
            return {**CARD, "class_names": ["nevus", "melanoma"]}

    stale = {**CARD, "class_names": ["benign", "malignant"]}  # what the caller resolved before the call
    result = explain_upload(RolledOut(attention=False), "m", stale, _png(np.zeros((40, 40, 3), np.uint8)),
                            max_pixels=10**8, decode_slots=_slots())
    assert (result.version, result.label) == (3, "melanoma") and list(result.probabilities) == ["nevus", "melanoma"]


def test_the_api_answers_200_and_counts_an_omitted_overlay() -> None:
    from prometheus_client import CollectorRegistry

    from service.app import create_app
    from training.contract.config import ServiceConfig

    backend = CardPredictor(attention=True)
    backend.attention = np.full((1, 32, 32), np.nan, np.float32)
    registry = CollectorRegistry()
    client = create_app(ServiceConfig(model_repo=Path("unused")), predictor=backend, registry=registry).test_client()
    upload = _png(np.zeros((40, 40, 3), np.uint8))
    answer = client.post("/api/v1/models/m/predict", data=upload, content_type="image/png")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["overlay_png"] and "attention_png" not in body
    assert body["overlay_omitted"] == {"attention": "the model's attention map has 1024 of 1024 values NaN or infinite"}
    assert registry.get_sample_value("medrobust_overlays_omitted_total", {"model": "m", "overlay": "attention"}) == 1.0

    backend.heatmap = np.full((1, 32, 32), np.nan, np.float32)
    png = client.post("/api/v1/models/m/predict", data=upload, content_type="image/png", headers={"Accept": "image/png"})
    assert png.status_code == 502
    assert png.get_json()["error"]["code"] == "overlay_unavailable"


def test_a_huge_upload_gets_overlays_capped_at_2048_on_its_long_side() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (1000, 3000, 3), dtype=np.uint8)
    result = explain_upload(MapsPredictor(attention=True), "m", CARD, _png(rgb), max_pixels=10**8, decode_slots=_slots())
    assert result.image_size == (3000, 1000) and result.overlay_size == (OVERLAY_MAX_SIDE, 683)
    for png in (result.overlay_png, result.attention_png):
        assert Image.open(io.BytesIO(png)).size == (OVERLAY_MAX_SIDE, 683)


def test_no_overlay_no_overlay_size() -> None:
    result = explain_upload(MapsPredictor(attention=True), "m", CARD, _png(np.zeros((40, 40, 3), np.uint8)),
                            explain=False, max_pixels=10**8, decode_slots=_slots())
    assert result.overlay_size is None and result.image_size == (40, 40)


def test_busy_decode_slots_answer_503_with_retry_after(monkeypatch) -> None:
    monkeypatch.setattr(service.explain, "DECODE_WAIT_SECONDS", 0.05)
    slots = _slots()
    with decode_slot(slots):  # the only slot is taken by another upload
        with pytest.raises(ApiError) as refused:
            explain_upload(MapsPredictor(attention=False), "m", CARD, _png(np.zeros((40, 40, 3), np.uint8)),
                           max_pixels=10**8, decode_slots=slots)
    assert (refused.value.code, refused.value.http_status) == ("busy", 503)
    assert refused.value.headers == {"Retry-After": "1"}
    with decode_slot(slots):  # released again: the next upload gets it
        pass


def test_a_failed_decode_gives_its_slot_back() -> None:
    slots = _slots()
    with pytest.raises(Exception, match="not a recognisable image"):
        explain_upload(MapsPredictor(attention=False), "m", CARD, b"not an image", max_pixels=10**8, decode_slots=slots)
    assert slots.acquire(blocking=False)


def test_the_raw_grid_is_answered_beside_the_overlay() -> None:
    backend = MapsPredictor(attention=False)
    result = explain_upload(backend, "m", CARD, _png(np.zeros((40, 40, 3), np.uint8)), max_pixels=10**8,
                            decode_slots=_slots())
    assert result.grid.layer == "conv3_block4_out" and result.grid_omitted is None
    np.testing.assert_allclose(result.grid.values, backend.grid[0], atol=5e-5)
    without = explain_upload(backend, "m", CARD, _png(np.zeros((40, 40, 3), np.uint8)), explain=False,
                             max_pixels=10**8, decode_slots=_slots())
    assert (without.grid, without.grid_omitted) == (None, None)


BAD_GRIDS = [
    (None, ("this version's gradcam signature has no heatmap_grid output (exported before it was added); "
            "re-export it with medrobust export to get the grid")),
    (np.full((1, 4, 4), np.nan, np.float32), "the model's heatmap_grid has 16 of 16 values NaN or infinite"),
    (np.full((1, 4, 4), 1.5, np.float32), "the model's heatmap_grid has values in [1.5, 1.5], expected [0, 1]"),
    (np.zeros((1, 8, 8), np.float32), "the model's heatmap_grid has shape [8, 8], expected [4, 4]"),
]


@pytest.mark.parametrize(("grid", "reason"), BAD_GRIDS, ids=["old-version", "nan", "out-of-range", "wrong-shape"])
def test_an_absent_or_bad_grid_is_left_out_with_its_reason(grid, reason) -> None:
    backend = MapsPredictor(attention=False)
    backend.grid = grid
    result = explain_upload(backend, "m", CARD, _png(np.zeros((40, 40, 3), np.uint8)), max_pixels=10**8,
                            decode_slots=_slots())
    assert (result.grid, result.grid_omitted) == (None, reason)
    assert result.overlay_png is not None and result.omitted == {}


def test_the_api_answers_the_grid_or_why_not() -> None:
    from service.app import create_app
    from training.contract.config import ServiceConfig

    backend = CardPredictor(attention=False)
    client = create_app(ServiceConfig(model_repo=Path("unused")), predictor=backend).test_client()
    upload = _png(np.zeros((40, 40, 3), np.uint8))
    body = client.post("/api/v1/models/m/predict", data=upload, content_type="image/png").get_json()
    grid = body["heatmap_grid"]
    assert (grid["layer"], grid["shape"]) == ("conv3_block4_out", [4, 4]) and "heatmap_grid_omitted" not in body
    np.testing.assert_allclose(grid["values"], backend.grid[0], atol=5e-5)
    backend.grid = None
    body = client.post("/api/v1/models/m/predict", data=upload, content_type="image/png").get_json()
    assert body["heatmap_grid"] is None and body["heatmap_grid_omitted"] == BAD_GRIDS[0][1]
    body = client.post("/api/v1/models/m/predict?explain=none", data=upload, content_type="image/png").get_json()
    assert "heatmap_grid" not in body and "heatmap_grid_omitted" not in body
