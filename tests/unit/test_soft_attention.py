"""SoftAttention follows the paper's equations: all channels, a spatial softmax per head, gamma."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from training.soft_attention import SoftAttention  # noqa: E402

H, W, C, HEADS = 5, 4, 8, 16


def _layer(seed: int = 0) -> SoftAttention:
    layer = SoftAttention(heads=HEADS, name="soft_attention")
    layer.build((None, H, W, C))
    rng = np.random.default_rng(seed)
    # Positive biases keep every score above the ReLU, so each input change reaches the softmax.
    layer.set_weights([rng.normal(size=(3, 3, C, HEADS)).astype("float32"), np.full(HEADS, 20.0, "float32"), np.float32(0.5)])
    return layer


def _features(seed: int = 1, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, H, W, C)).astype("float32")


def test_maps_have_one_softmax_per_head_over_space():
    attended, maps = _layer()(_features())
    assert tuple(maps.shape) == (2, H, W, HEADS)
    assert tuple(attended.shape) == (2, H, W, C)
    np.testing.assert_allclose(np.sum(maps, axis=(1, 2)), np.ones((2, HEADS)), rtol=1e-5)


def test_output_is_gamma_times_features_times_summed_heads():
    layer = _layer()
    x = _features()
    attended, maps = layer(x)
    expected = 0.5 * x * np.sum(maps, axis=-1, keepdims=True)
    np.testing.assert_allclose(attended, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channel", range(C))
def test_every_channel_of_the_feature_map_moves_the_maps(channel):
    # The common Keras copy (Conv3D with stride C over the channel axis) reads only the first
    # channels; the paper's convolution spans all of them.
    layer = _layer()
    x = _features()
    changed = x.copy()
    changed[:, 2, 2, channel] += 3.0
    _, before = layer(x)
    _, after = layer(changed)
    assert np.abs(np.asarray(after) - np.asarray(before)).max() > 1e-4


def test_config_round_trips():
    layer = SoftAttention(heads=4, kernel_size=5, gamma_init=0.2, name="sa")
    clone = SoftAttention.from_config(layer.get_config())
    assert (clone.heads, clone.kernel_size, clone.gamma_init, clone.name) == (4, 5, 0.2, "sa")


def _tiny_model() -> keras.Model:
    inputs = keras.Input((H, W, C))
    attended, maps = SoftAttention(heads=HEADS, name="soft_attention")(inputs)
    return keras.Model(inputs, [attended, maps])


def test_outputs_equal_after_reload_from_keras_file(tmp_path):
    model = _tiny_model()
    x = _features()
    path = tmp_path / "attention.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    for a, b in zip(model(x), reloaded(x)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_outputs_equal_after_reload_from_savedmodel(tmp_path):
    model = _tiny_model()
    x = _features()
    model.export(str(tmp_path / "saved"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    out = loaded.serve(tf.constant(x))
    for a, b in zip(model(x), out):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"heads": 0}, "expects heads >= 1, got 0"),
        ({"kernel_size": 2}, "expects an odd kernel_size >= 1, got 2"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftAttention(**kwargs)
