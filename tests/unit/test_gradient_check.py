"""The finite-difference comparison behind `gradient_consistent`, on plain numpy and TensorFlow functions."""

from __future__ import annotations

import numpy as np
import pytest

from audit.gradient_check import (
    Agreement,
    black_box_attack,
    central_difference,
    compare,
    forward_deterministic,
    margin_cotangent,
)

SHAPE = (4, 6, 6, 3)
W = np.random.default_rng(0).normal(size=36 * 3).astype(np.float64)


def _points() -> np.ndarray:
    return np.random.default_rng(1).uniform(0.2, 0.8, SHAPE).astype(np.float32)


def _smooth(x: np.ndarray) -> np.ndarray:
    """A smooth scalar per image: tanh of a linear map plus a square."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    return np.tanh(flat @ W / 10.0) * 5.0 + (flat**2).sum(axis=1)


def _smooth_gradient(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    inner = 1.0 - np.tanh(flat @ W / 10.0) ** 2
    return (inner[:, None] * W[None] / 2.0 + 2.0 * flat).reshape(x.shape).astype(np.float32)


def _compare(gradient: np.ndarray, value=_smooth, points=None, **kwargs) -> Agreement:
    points = _points() if points is None else points
    return compare(value, gradient, points, scale=np.full(len(points), 10.0), rng=np.random.default_rng(2), **kwargs)


def test_central_difference_matches_the_derivative_along_each_direction():
    x = _points()
    directions = np.random.default_rng(3).choice([-1.0, 1.0], size=(4, 2, *SHAPE[1:])).astype(np.float32)
    fd = central_difference(_smooth, x, directions, 1e-3)
    exact = (directions * _smooth_gradient(x)[:, None]).reshape(4, 2, -1).sum(axis=2)
    np.testing.assert_allclose(fd, exact, rtol=2e-3, atol=1e-2)


def test_central_difference_refuses_directions_of_another_shape():
    with pytest.raises(ValueError, match=r"expected directions \[n, r, \.\.\.\] for points \[4, 6, 6, 3\], got \[4, 2, 6, 6\]"):
        central_difference(_smooth, _points(), np.zeros((4, 2, 6, 6), np.float32), 1e-3)


def test_the_true_gradient_agrees():
    agreement = _compare(_smooth_gradient(_points()))
    assert agreement.passed
    assert agreement.gradient_error < 1e-2 and agreement.random_error < 0.1
    assert not agreement.falling.any()


def test_a_tiny_gradient_of_an_unrelated_map_disagrees():
    """The decoy's lie: 1e-5 times another linear map's gradient. Small promises nothing, but disagree they do."""
    unrelated = np.random.default_rng(4).normal(size=SHAPE).astype(np.float32)
    agreement = _compare(1e-5 * unrelated)
    assert not agreement.passed
    assert agreement.gradient_error > 0.5 and agreement.random_error > 0.5


def test_a_gradient_pointing_the_wrong_way_disagrees_and_the_forward_falls_along_it():
    agreement = _compare(-_smooth_gradient(_points()))
    assert not agreement.passed
    assert agreement.falling.all()


def test_a_gradient_right_only_along_its_own_sign_fails_on_the_random_directions():
    """Scaled per pixel by a positive factor, the gradient keeps its sign (and |g|_1 nearly) but not its direction."""
    true = _smooth_gradient(_points())
    skewed = true * np.random.default_rng(5).uniform(0.0, 2.0, SHAPE).astype(np.float32)
    agreement = _compare(skewed)
    assert agreement.gradient_error < 0.2  # along its own sign it nearly holds
    assert agreement.random_error > 0.2 and not agreement.passed


def test_a_zero_gradient_of_a_staircase_disagrees():
    """An 8-bit quantiser: zero gradient everywhere, yet the forward moves by whole grey levels."""
    def staircase(x):
        return _smooth(np.round(x * 255.0) / 255.0)

    agreement = _compare(np.zeros(SHAPE, np.float32), value=staircase, step=1e-3)
    assert not agreement.passed


def test_a_flat_function_agrees_with_a_zero_gradient_under_the_noise_floor():
    agreement = _compare(np.zeros(SHAPE, np.float32), value=lambda x: np.full(len(x), 3.0))
    assert agreement.passed and agreement.gradient_error == 0.0


def test_a_non_finite_gradient_fails():
    gradient = _smooth_gradient(_points())
    gradient[0, 0, 0, 0] = np.nan
    assert not _compare(gradient).passed


@pytest.mark.slow  # TensorFlow's import alone takes most of its ~25 s on a busy machine
def test_a_tensorflow_function_agrees_with_its_tape_gradient_and_not_with_another_models():
    import tensorflow as tf

    rng = np.random.default_rng(6)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
    dense = tf.constant(rng.normal(size=(6 * 6 * 4, 3)).astype(np.float32) / 10.0)

    def logits(x):
        h = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        return tf.matmul(tf.reshape(h, (-1, 6 * 6 * 4)), dense)

    x = _points()
    labels = np.array([0, 1, 2, 0])
    pair = margin_cotangent(logits(x).numpy(), labels)
    rows = np.repeat(np.arange(4), 8)

    def margin(points):
        return (logits(tf.constant(points)).numpy().astype(np.float64) * pair[rows]).sum(axis=1)

    def gradient_of(fn):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            total = tf.reduce_sum(fn(xt) * pair)
        return tape.gradient(total, xt).numpy()

    scale = np.abs(logits(x).numpy()).max(axis=1)
    honest = compare(margin, gradient_of(logits), x, scale=scale, rng=np.random.default_rng(7))
    assert honest.passed, (honest.gradient_error, honest.random_error)
    other = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
    lying = compare(
        margin, gradient_of(lambda t: tf.matmul(tf.reshape(tf.nn.relu(tf.nn.conv2d(t, other, 1, "SAME")), (-1, 144)), dense)),
        x, scale=scale, rng=np.random.default_rng(7),
    )
    assert not lying.passed


def test_margin_cotangent_marks_the_true_class_and_the_runner_up():
    pair = margin_cotangent(np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]]), np.array([0, 2]))
    assert pair.tolist() == [[1.0, 0.0, -1.0], [0.0, -1.0, 1.0]]


class _Forward:
    """A served model's forward alone: `logits` is all forward_deterministic calls."""

    def __init__(self, noise: float):
        self.rng, self.noise = np.random.default_rng(8), noise

    def logits(self, images):
        clean = images.reshape(len(images), -1)[:, :3].astype(np.float32) * 10.0
        return clean + self.rng.normal(scale=self.noise, size=clean.shape).astype(np.float32) if self.noise else clean


def test_two_forward_calls_must_agree():
    images = _points()
    assert forward_deterministic(_Forward(0.0), images).passed  # type: ignore[arg-type]  # only `logits` is called
    random = forward_deterministic(_Forward(0.5), images)  # type: ignore[arg-type]
    assert not random.passed and random.name == "forward_deterministic"
    assert "a randomised forward" in random.detail


@pytest.mark.parametrize(("attack", "replacement"), [("linf_pgd", "square"), ("ensemble", "square"), ("apgd_ce", "square"),
                                                     ("fgsm", "square"), ("l2_pgd", None)])
def test_the_black_box_replacement_is_a_query_only_attack_of_the_same_norm(attack, replacement):
    assert black_box_attack(attack) == replacement


def test_no_point_compares_to_an_agreement_that_passes():
    empty = np.zeros((0, *SHAPE[1:]), np.float32)
    agreement = compare(lambda x: np.zeros(len(x)), empty, empty, scale=np.zeros(0), rng=np.random.default_rng(9))
    assert agreement.finite_difference.shape == (0, 4) and agreement.passed
