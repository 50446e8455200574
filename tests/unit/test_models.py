"""The paper's four classifiers: heads, normalisation inside the model, parameter budget."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.models import build_model, describe_model, model_name  # noqa: E402

# (backbone, input size) -> Grad-CAM layer and its grid: the deepest with 7x7 or more positions,
# else the largest grid allowed (ResNet-50 at 32 px: conv5 is 1x1, conv4 2x2, conv3 4x4).
GRADCAM_TAPS = [
    ("resnet50", 32, "conv3_block4_out", (4, 4), True),
    ("resnet50", 64, "conv3_block4_out", (8, 8), False),
    ("resnet50", 224, "conv5_block3_out", (7, 7), False),
    ("inception_resnet_v2", 75, "block35_10_ac", (7, 7), False),  # its smallest input: 32 and 64 px are refused
    pytest.param("inception_resnet_v2", 224, "block17_20_ac", (12, 12), False, marks=pytest.mark.slow),
]


def test_resnet50_attention_adds_about_1_3_percent_parameters():
    # The paper: soft attention adds ~1.3% to ResNet-50. Here: 23,911,320 vs 23,602,055 (+1.31%)
    # for 7 classes, almost all of it the 3x3 convolution over 2048 channels into 16 heads.
    baseline = build_model("resnet50", attention=False, num_classes=7, image_size=32)
    attentive = build_model("resnet50", attention=True, num_classes=7, image_size=32)
    assert baseline.count_params() == 23_602_055
    assert attentive.count_params() == 23_911_320
    assert attentive.count_params() / baseline.count_params() - 1 == pytest.approx(0.0131, abs=0.0005)


def test_resnet50_heads_follow_the_paper():
    attentive = build_model("resnet50", attention=True, num_classes=3, image_size=64)
    names = [layer.name for layer in attentive.layers]
    assert names[-5:] == ["attention_concat", "head_relu", "head_dropout", "head_pool", "logits"]
    assert {"soft_attention", "attended_pool", "features_pool"} <= set(names[-8:-5])
    concat_inputs = [t.name for t in attentive.get_layer("attention_concat").input]
    assert len(concat_inputs) == 2
    assert attentive.get_layer("soft_attention").input.shape[1:] == (2, 2, 2048)
    assert attentive.get_layer("head_dropout").rate == 0.5
    baseline = build_model("resnet50", attention=False, num_classes=3, image_size=64)
    assert [layer.name for layer in baseline.layers][-2:] == ["head_pool", "logits"]


def test_models_return_logits_from_unit_range_rgb():
    model = build_model("resnet50", attention=False, num_classes=3, image_size=32)
    out = model(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32"))
    assert out.shape == (2, 3)
    assert model.get_layer("logits").activation.__name__ == "linear"


def test_resnet_normalisation_matches_keras_preprocess_input():
    model = build_model("resnet50", attention=False, num_classes=2, image_size=32)
    x = np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype("float32")
    got = model.get_layer("normalisation")(x)
    want = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_local_weights_file_is_loaded(tmp_path):
    plain = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    plain.save_weights(path)
    model = build_model("resnet50", attention=True, num_classes=2, image_size=32, weights=str(path))
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel, plain.get_layer("conv1_conv").kernel)


@pytest.mark.parametrize("attention", [False, True])
def test_inception_resnet_v2_taps_block8_9_by_name(attention):
    model = build_model("inception_resnet_v2", attention=attention, num_classes=2, image_size=75)
    names = [layer.name for layer in model.layers]
    assert "block8_9_ac" in names and "block8_10_mixed" not in names and "conv_7b" not in names
    assert names[-3:] == ["head_dropout", "head_flatten", "logits"]
    x = np.random.default_rng(0).uniform(size=(1, 75, 75, 3)).astype("float32")
    np.testing.assert_allclose(model.get_layer("normalisation")(x), x * 2 - 1, atol=1e-6)
    desc = describe_model(model)
    assert (desc.backbone.value, desc.attention, desc.tap_layer) == ("inception_resnet_v2", attention, "block8_9_ac")
    # At 75 px block8_9 is 1x1 and block17_20 3x3: Grad-CAM reads the first stage's last block.
    assert (desc.gradcam.layer, desc.gradcam.grid, desc.gradcam.note) == ("block35_10_ac", (7, 7), None)


@pytest.mark.parametrize(
    "args, message",
    [
        (("vgg16", {}), "unknown backbone: expected one of resnet50, inception_resnet_v2, got 'vgg16'"),
        (("inception_resnet_v2", {"image_size": 32}), "inception_resnet_v2 needs image_size >= 75, got 32"),
        (("resnet50", {"num_classes": 1}), "expected num_classes >= 2, got 1"),
    ],
)
def test_bad_model_arguments(args, message):
    backbone, overrides = args
    kwargs = {"attention": False, "num_classes": 3, "image_size": 64, **overrides}
    with pytest.raises(ValueError, match=message):
        build_model(backbone, **kwargs)


@pytest.mark.parametrize("backbone, size, layer, grid, small", GRADCAM_TAPS)
def test_gradcam_layer_is_chosen_by_the_grid_it_gives(backbone, size, layer, grid, small):
    model = build_model(backbone, attention=backbone == "resnet50", num_classes=3, image_size=size)
    tap = describe_model(model).gradcam
    assert (tap.layer, tap.grid) == (layer, grid)
    assert tuple(model.get_layer(tap.layer).output.shape[1:3]) == grid
    if small:
        assert tap.note == (
            f"{grid[0]}x{grid[1]} positions at {size} px: no {backbone} layer allowed for Grad-CAM gives 7x7 "
            "at this input size; a larger --image-size does"
        )
    else:
        assert tap.note is None
    # The head still reads the backbone's own tap layer: Grad-CAM's choice is apart from it.
    assert describe_model(model).tap_layer == {"resnet50": "conv5_block3_out"}.get(backbone, "block8_9_ac")


def test_model_names():
    assert model_name("derm", "resnet50", True) == "derm-resnet50-attention"
    assert model_name("dr", "inception_resnet_v2", False) == "dr-inception_resnet_v2-baseline"
    with pytest.raises(ValueError, match="got 'Derm-1'"):
        model_name("Derm-1", "resnet50", True)
