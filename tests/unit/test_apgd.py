"""APGD over the served signatures: the schedule, the ball, the cost, the losses, the argument checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from audit import apgd as apgd_module
from audit.apgd import APGDCE, apgd, apgd_targeted, checkpoints, target_classes
from audit.attack_base import Target
from audit.foolbox_model import ServedModel
from audit.ratelimit import RateLimitedPredictor, TokenBucket
from service.predictor import Prediction, VjpResult
from tests.attack_models import EPSILON, Case, Recorder, assert_first_fooling_point_kept, case, rng


@pytest.fixture
def four() -> Case:
    return case(4)


@pytest.fixture
def two() -> Case:
    return case(2)


def test_checkpoints_are_the_papers_for_100_iterations():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in hundredths to stay exact.
    p = [0, 22]
    while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    assert p[1:] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(100) == tuple(p[1:])
    assert checkpoints(1) == (1,)


def _stub(rising: bool, signs: np.ndarray, flips: tuple[int, ...]):
    """K = 2, never fooled. The loss z_1 - z_0 rises with every call, or never moves; the gradient is
    cotangent . signs, with the signs flipped at every call in `flips` (so the step size shows)."""
    count = {"calls": 0}

    def logits_and_gradient(x, cotangent):
        flipped = (-1.0) ** sum(count["calls"] >= f for f in flips)
        rival = -50.0 + (0.1 * count["calls"] if rising else 0.0)
        count["calls"] += 1
        logits = np.tile(np.array([[10.0, rival]], np.float32), (len(x), 1))
        return logits, (cotangent[:, 1] - cotangent[:, 0])[:, None, None, None] * signs[: len(x)] * flipped

    return logits_and_gradient


@pytest.mark.parametrize("rising", [False, True], ids=["loss-stuck", "loss-rising"])
def test_step_size_halves_at_checkpoints_only_when_progress_stalls(rising):
    """Stuck: at checkpoint j the step halves to 2 eps / 2^j and restarts at the best point (the start).
    Rising: the step stays 2 eps and the iterate carries on."""
    eps, iterations = 0.05, 100
    x = np.full((2, 8, 8, 3), 0.5, np.float32)
    signs = rng(1).choice(np.array([-1.0, 1.0], np.float32), size=x.shape)
    record = Recorder(_stub(rising, signs, checkpoints(iterations)))
    run = apgd(record, x, np.zeros(2, np.int64), eps, clean_logits=np.array([[1, 0]] * 2, np.float32),
               loss="cw", iterations=iterations, rng=rng())
    points = [args[0] for args, _ in record.calls]  # points[i] is iterate i, points[0] the random start
    grads = [out[1] for _, out in record.calls]
    assert run.calls == len(points) == iterations + 1 and not run.fooled.any()

    def project(v):
        return np.clip(v, x - eps, x + eps)

    np.testing.assert_allclose(points[1], project(points[0] + 2 * eps * signs), atol=1e-6)
    for j, w in enumerate(checkpoints(iterations), start=1):
        if w == iterations:
            break
        base, step, grad = (points[w], 2 * eps, grads[w]) if rising else (points[0], 2 * eps / 2**j, grads[0])
        expected = project(base + 0.75 * (project(base + step * np.sign(grad)) - base) + 0.25 * (base - points[w - 1]))
        np.testing.assert_allclose(points[w + 1], expected, atol=1e-6, err_msg=f"after checkpoint {j} ({w})")


def _in_ball(run, images, eps):
    assert run.adversarial.dtype == np.float32 and run.adversarial.shape == images.shape
    distance = np.abs(run.adversarial.astype(np.float64) - images.astype(np.float64)).max(axis=(1, 2, 3))
    assert distance.max() <= eps + 1e-6
    assert run.adversarial.min() >= 0.0 and run.adversarial.max() <= 1.0


@pytest.mark.parametrize("eps", [EPSILON, 0.3])
@pytest.mark.parametrize("attack", ["ce", "dlr", "cw", "targeted"])
def test_adversarials_stay_in_the_ball_and_in_unit_range(four, attack, eps):
    images = four.images.copy()
    images[:4, :8] = 0.0  # saturated corners: the ball is cut by [0, 1] there
    images[4:8, -8:] = 1.0
    clean = four.logits(images)
    if attack == "targeted":
        run = apgd_targeted(four.logits_and_gradient, images, four.labels, eps, clean_logits=clean, iterations=10,
                            rng=rng(), forward=four.logits)
    else:
        run = apgd(four.logits_and_gradient, images, four.labels, eps, clean_logits=clean, loss=attack, iterations=10,
                   rng=rng(), forward=four.logits)
    _in_ball(run, images, eps)


@pytest.mark.parametrize("loss", ["ce", "dlr", "cw"])
def test_fooled_is_the_models_verdict_and_margins_only_fall(four, loss):
    run = apgd(four.logits_and_gradient, four.images, four.labels, EPSILON, clean_logits=four.clean_logits, loss=loss,
               iterations=30, rng=rng(), forward=four.logits)
    assert 0 < run.fooled.sum() < len(run.fooled), "EPSILON should fool the tiny model partly"
    np.testing.assert_array_equal(run.fooled, ~four.robust(run.adversarial))
    assert run.margins.shape == (31, len(four.labels)) and run.margins.dtype == np.float32
    assert (np.diff(run.margins, axis=0) <= 0).all()
    np.testing.assert_array_equal(run.fooled, run.margins[-1] < 0)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_two_classes(two, loss):
    run = apgd(two.logits_and_gradient, two.images, two.labels, EPSILON, clean_logits=two.clean_logits, loss=loss,
               iterations=30, rng=rng())
    assert 0 < run.fooled.sum() < len(run.fooled)
    np.testing.assert_array_equal(run.fooled, ~two.robust(run.adversarial))
    _in_ball(run, two.images, EPSILON)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_two_classes_make_one_vjp_call_per_iteration_and_no_forward(two, loss):
    """For K = 2 the previous point's cotangent gives the exact step: no forward is asked for."""
    record = Recorder(two.logits_and_gradient)
    run = apgd(record, two.images, two.labels, 0.01, clean_logits=two.clean_logits, loss=loss, iterations=20, rng=rng(),
               forward=_never_called)
    assert not run.fooled.all()
    assert run.calls == len(record.calls) == 21  # the random start, then one per iteration
    sizes = [len(args[0]) for args, _ in record.calls]
    correct = int((two.clean_logits.argmax(axis=1) == two.labels).sum())
    assert sizes[0] == correct and sizes == sorted(sizes, reverse=True)  # only images standing are sent


@pytest.mark.parametrize("loss", ["ce", "dlr", "cw"])
def test_more_classes_make_a_forward_then_a_vjp_at_the_same_point(four, loss):
    forward, vjp = Recorder(four.logits), Recorder(four.logits_and_gradient)
    run = apgd(vjp, four.images, four.labels, 0.002, clean_logits=four.clean_logits, loss=loss, iterations=20, rng=rng(),
               forward=forward)
    correct = four.clean_logits.argmax(axis=1) == four.labels
    np.testing.assert_array_equal(run.fooled, ~correct)  # none fooled: every iterate but the last is followed by a step
    assert len(forward.calls) == 21 and len(vjp.calls) == 20  # no gradient at the last iterate: no step follows
    assert run.calls == 41
    for ((point,), logits), ((sent, cotangent), _) in zip(forward.calls, vjp.calls):
        assert len(point) == correct.sum()
        np.testing.assert_array_equal(sent, point)
        # the cotangent is the loss's gradient at this very point's logits, not at the previous point's
        objective = apgd_module._OBJECTIVES[loss]
        np.testing.assert_allclose(cotangent, objective(logits, _labels_of(four, point), None)[1], atol=1e-6)


def test_an_image_the_forward_shows_fooled_gets_no_gradient(four):
    forward, vjp = Recorder(four.logits), Recorder(four.logits_and_gradient)
    run = apgd(vjp, four.images, four.labels, EPSILON, clean_logits=four.clean_logits, iterations=20, rng=rng(),
               forward=forward)
    assert 0 < run.fooled.sum() < len(run.fooled)
    for ((point,), logits), ((sent, _), _) in zip(forward.calls, vjp.calls):
        standing = logits.argmax(axis=1) == _labels_of(four, point)
        np.testing.assert_array_equal(sent, point[standing])
    assert_first_fooling_point_kept(run, forward.visits(four.images, EPSILON), four.images, four.labels,
                                    four.clean_logits)


class _CountingBucket(TokenBucket):
    def __init__(self) -> None:
        super().__init__(rate=1e9)
        self.taken = 0

    def take(self) -> float:
        self.taken += 1
        return super().take()


class _Predictor:
    """The four-class tiny model behind the Predictor interface, as one served version."""

    def __init__(self, case_: Case):
        self.case = case_

    def model_card(self, model, version=None):
        return {"num_classes": self.case.classes, "signatures": {"serving_default": {}, "vjp": {}}}

    def predict(self, model, images, *, version=None):
        logits = self.case.logits(images)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return Prediction(model, 1, logits, shifted / shifted.sum(axis=1, keepdims=True), logits.argmax(axis=1))

    def vjp(self, model, images, cotangent, *, version=None):
        return VjpResult(model, 1, *self.case.logits_and_gradient(images, cotangent))


def test_the_forward_beside_each_vjp_is_counted_and_rate_limited(four):
    """The registry's APGD-CE on a served four-class model: its forwards are served calls like its vjp calls."""
    bucket = _CountingBucket()
    served = ServedModel(RateLimitedPredictor(_Predictor(four), bucket), "m", 1, batch_size=64)
    APGDCE(steps=5).run(Target(served), four.images, four.labels, 0.002, clean_logits=four.clean_logits, rng=rng())
    correct = int((four.clean_logits.argmax(axis=1) == four.labels).sum())  # none fooled at 0.002 (above)
    assert (served.counts.forward, served.counts.vjp) == (6 * correct, 5 * correct)
    assert bucket.taken == 6 + 5  # one request a call: the images fit in one batch


def _labels_of(case_: Case, points: np.ndarray) -> np.ndarray:
    """The label of the image whose ball holds each point (the images are far apart)."""
    distance = np.abs(points[:, None] - case_.images[None]).max(axis=(2, 3, 4))
    return case_.labels[distance.argmin(axis=1)]


def test_stops_calling_once_every_image_is_fooled(four):
    forward, vjp = Recorder(four.logits), Recorder(four.logits_and_gradient)
    run = apgd(vjp, four.images, four.labels, 0.3, clean_logits=four.clean_logits, iterations=50, rng=rng(),
               forward=forward)
    assert run.fooled.all()
    assert run.calls == len(forward.calls) + len(vjp.calls) and len(forward.calls) < 51
    assert (run.margins[len(forward.calls) - 1 :] == run.margins[-1]).all()


def test_first_fooling_point_is_kept_and_fooled_images_leave(two):
    record = Recorder(two.logits_and_gradient)
    run = apgd(record, two.images, two.labels, EPSILON, clean_logits=two.clean_logits, iterations=20, rng=rng())
    assert 0 < run.fooled.sum() < len(run.fooled)
    visits = record.visits(two.images, EPSILON)
    assert_first_fooling_point_kept(run, visits, two.images, two.labels, two.clean_logits)


def test_images_already_misclassified_are_returned_clean_and_not_attacked(four):
    labels = four.labels.copy()
    labels[:3] = (four.clean_logits[:3].argmax(axis=1) + 1) % 4
    record = Recorder(four.logits)
    run = apgd(four.logits_and_gradient, four.images, labels, EPSILON, clean_logits=four.clean_logits, iterations=5,
               rng=rng(), forward=record)
    assert run.fooled[:3].all()
    np.testing.assert_array_equal(run.adversarial[:3], four.images[:3])
    assert len(record.calls[0][0][0]) == int((four.clean_logits.argmax(axis=1) == labels).sum())


def test_epsilon_zero_is_a_no_op_without_calls(four):
    record = Recorder(four.logits_and_gradient)
    for run in (
        apgd(record, four.images, four.labels, 0.0, clean_logits=four.clean_logits, iterations=7, rng=rng(),
             forward=record),
        apgd_targeted(record, four.images, four.labels, 0, clean_logits=four.clean_logits, iterations=7, rng=rng(),
                      forward=record),
    ):
        np.testing.assert_array_equal(run.adversarial, four.images)
        assert run.calls == 0 and run.margins.shape == (8, len(four.labels))
        np.testing.assert_array_equal(run.fooled, four.clean_logits.argmax(axis=1) != four.labels)
    assert record.calls == []


def test_targeted_attacks_the_top_other_classes():
    logits = rng(3).normal(size=(5, 12)).astype(np.float32)
    labels = np.array([0, 3, 11, 5, 5])
    targets = target_classes(logits, labels, 9)
    assert targets.shape == (5, 9)
    for row, label, picked in zip(logits, labels, targets):
        others = [c for c in np.argsort(-row) if c != label]
        assert list(picked) == others[:9]
    assert target_classes(logits[:, :4], labels % 4, 9).shape == (5, 3)
    np.testing.assert_array_equal(target_classes(logits, labels, 2), targets[:, :2])


def test_targeted_runs_one_attack_per_target_on_the_images_left(four):
    iterations = 10
    forward, vjp = Recorder(four.logits), Recorder(four.logits_and_gradient)
    run = apgd_targeted(vjp, four.images, four.labels, EPSILON, clean_logits=four.clean_logits,
                        iterations=iterations, rng=rng(), forward=forward)
    assert 0 < run.fooled.sum() < len(run.fooled)
    # K - 1 = 3 targets; the targeted DLR's step needs the forward first (one per iterate, no vjp at the last)
    assert run.calls == len(forward.calls) + len(vjp.calls) and len(forward.calls) <= 3 * (iterations + 1)
    evaluated, stepped = forward.visits(four.images, EPSILON), vjp.visits(four.images, EPSILON)
    targets = target_classes(four.clean_logits, four.labels, 9)
    for i in np.flatnonzero(~run.fooled):
        assert len(evaluated[i]) == 3 * (iterations + 1) and len(stepped[i]) == 3 * iterations
        for j in range(3):  # each run's first step follows the targeted-DLR cotangent, largest at its target
            cotangent = stepped[i][j * iterations].cotangent.copy()
            cotangent[four.labels[i]] = -np.inf
            assert cotangent.argmax() == targets[i, j]
    assert_first_fooling_point_kept(run, evaluated, four.images, four.labels, four.clean_logits)
    np.testing.assert_array_equal(run.fooled, ~four.robust(run.adversarial))
    assert (np.diff(run.margins, axis=0) <= 0).all()


def _numeric_gradient(fn, z, y, t):
    grad = np.zeros_like(z)
    for i in range(z.shape[1]):
        step = np.zeros_like(z)
        step[:, i] = 1e-6
        grad[:, i] = (fn(z + step, y, t)[0] - fn(z - step, y, t)[0]) / 2e-6
    return grad


@pytest.mark.parametrize("name", ["_cross_entropy", "_dlr", "_margin", "_targeted_dlr", "_targeted_margin"])
def test_cotangents_are_the_losses_gradients(name):
    fn = getattr(apgd_module, name)
    z = rng(4).normal(size=(6, 5)) * 3
    y = np.array([0, 1, 2, 3, 4, 0])
    t = (y + 1 + np.arange(6) % 3) % 5
    np.testing.assert_allclose(fn(z, y, t)[1], _numeric_gradient(fn, z, y, t), atol=1e-6)


def test_losses_match_their_definitions():
    z = np.array([[3.0, 1.0, 2.0, -1.0]])
    y, t = np.array([0]), np.array([3])
    assert apgd_module._dlr(z, y, None)[0][0] == pytest.approx(-(3 - 2) / (3 - 1 + 1e-12))
    assert apgd_module._margin(z, y, None)[0][0] == pytest.approx(2 - 3)
    assert apgd_module._targeted_dlr(z, y, t)[0][0] == pytest.approx(-(3 + 1) / (3 - (1 - 1) / 2 + 1e-12))
    assert apgd_module._targeted_margin(z, y, t)[0][0] == pytest.approx(-1 - 3)
    assert apgd_module._cross_entropy(z, y, None)[0][0] == pytest.approx(math.log(np.exp(z).sum()) - 3)


def _never_called(*_args):
    raise AssertionError("the model must not be called for bad arguments")


X = np.full((2, 4, 4, 3), 0.5, np.float32)
Y = np.zeros(2, np.int64)
Z2 = np.array([[1.0, 0.0]] * 2, np.float32)
Z3 = np.array([[1.0, 0.0, 0.0]] * 2, np.float32)
BAD = [
    ({"iterations": 0}, "expected iterations >= 1, got 0"),
    ({"iterations": 2.5}, "expected iterations >= 1, got 2.5"),
    ({"loss": "l2"}, "expected loss in ('ce', 'dlr', 'cw'), got 'l2'"),
    ({"loss": "dlr", "clean_logits": Z2}, "expected at least 3 classes for the DLR loss, got 2; use loss='cw'"),
    ({"epsilon": -0.1}, "expected epsilon >= 0, got -0.1"),
    ({"epsilon": float("nan")}, "expected epsilon >= 0, got nan"),
    ({"images": X[0]}, "expected images of shape [n, H, W, 3], got (4, 4, 3)"),
    ({"images": X[..., :1]}, "expected images of shape [n, H, W, 3], got (2, 4, 4, 1)"),
    ({"images": X * 3}, "expected images in [0, 1], got values in [1.5, 1.5]"),
    ({"labels": Y[:1]}, "expected integer labels of shape (2,), got int64 (1,)"),
    ({"labels": Y.astype(np.float32)}, "expected integer labels of shape (2,), got float32 (2,)"),
    ({"labels": Y + 3}, "expected labels in [0, 3), got values in [3, 3]"),
    ({"clean_logits": Z3[:1]}, "expected clean_logits of shape (2, K) with K >= 2, got (1, 3)"),
    ({"clean_logits": Z3[:, :1]}, "expected clean_logits of shape (2, K) with K >= 2, got (2, 1)"),
    ({"rng": np.random.RandomState(0)}, "expected rng to be a numpy.random.Generator, got RandomState"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_arguments_say_what_was_expected(change, message):
    args = {"images": X, "labels": Y, "epsilon": 0.1, "clean_logits": Z3, "iterations": 3, "rng": rng(), **change}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        apgd(_never_called, args.pop("images"), args.pop("labels"), args.pop("epsilon"), **args)


def test_bad_target_count():
    with pytest.raises(ValueError, match=r"^expected n_target >= 1, got 0$"):
        apgd_targeted(_never_called, X, Y, 0.1, clean_logits=Z3, n_target=0, rng=rng())


def test_a_model_answering_the_wrong_shape_is_named():
    def wrong(x, cotangent):
        return np.zeros((len(x), 5), np.float32), np.zeros_like(x)

    def wrong_gradient(x, cotangent):
        return np.zeros((len(x), 3), np.float32), np.zeros_like(x[:, :1])

    def forward(x):
        return np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (len(x), 1))

    with pytest.raises(ValueError, match=re.escape("expected logits of shape (2, 2) from the model, got (2, 5)")):
        apgd(wrong, X, Y, 0.1, clean_logits=Z2, rng=rng())
    with pytest.raises(ValueError, match=re.escape("expected logits of shape (2, 3) from the model, got (2, 5)")):
        apgd(_never_called, X, Y, 0.1, clean_logits=Z3, rng=rng(), forward=lambda x: wrong(x, None)[0])
    message = "expected gradient of shape (2, 4, 4, 3) from the model, got (2, 1, 4, 3)"
    with pytest.raises(ValueError, match=re.escape(message)):
        apgd(wrong_gradient, X, Y, 0.1, clean_logits=Z3, rng=rng(), forward=forward)


Z4 = np.array([[1.0, 0.0, 0.0, 0.0]] * 2, np.float32)


@pytest.mark.parametrize(
    ("run", "what", "k"),
    [
        (lambda: apgd(_never_called, X, Y, 0.1, clean_logits=Z3, rng=rng()), "loss 'ce'", 3),
        (lambda: apgd(_never_called, X, Y, 0.1, clean_logits=Z3, loss="dlr", rng=rng()), "loss 'dlr'", 3),
        (lambda: apgd(_never_called, X, Y, 0.1, clean_logits=Z3, loss="cw", rng=rng()), "loss 'cw'", 3),
        (lambda: apgd_targeted(_never_called, X, Y, 0.1, clean_logits=Z4, rng=rng()), "the targeted DLR loss", 4),
    ],
    ids=["ce", "dlr", "cw", "targeted-dlr"],
)
def test_a_loss_whose_step_needs_the_forward_refuses_to_run_without_it(run, what, k):
    message = f"expected a forward (serving_default) callable for the exact gradient of {what} with K = {k}, got None"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        run()


def test_where_one_call_is_exact_no_forward_is_needed():
    assert apgd_module.one_call_is_exact("ce", 2) and apgd_module.one_call_is_exact("cw", 2)
    assert not any(apgd_module.one_call_is_exact(loss, 3) for loss in ("ce", "dlr", "cw"))

    def still(x, cotangent):  # a model that never changes its mind: nothing is fooled
        return np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (len(x), 1)), np.ones_like(x)

    run = apgd_targeted(still, X, Y, 0.1, clean_logits=Z3, iterations=3, rng=rng(), forward=_never_called)
    assert run.calls == 2 * 4  # K = 3: two targets, the targeted margin's one call per iterate


# -- exact against stale gradients on a model where the cross-entropy's weights change between iterates ------------
# A linear four-class model on 2x2x3 images, true class 0 far ahead. The cross-entropy's input gradient is
# p1 w1 + p2 w2 (w0 = w3 = 0): on the 9 values where w1 = 1 and w2 = +6 agree its sign is always +, on the
# last 3 (w2 = -6) it is the sign of p1 - 6 p2, which flips as the steps raise z2 faster than z1. The
# images differ only in where they start on that slope, so for some the flip comes between two iterates.
LINEAR_EPS = 0.05
_SIGNS = np.array([1.0] * 9 + [-1.0] * 3, np.float32)
_WEIGHTS = np.stack([np.zeros(12), np.ones(12), 6 * _SIGNS, np.zeros(12)], axis=1).astype(np.float32)
_BIAS = np.array([14.0, 0.0, -14.4, -5.0], np.float32)


def _linear_served():
    import tensorflow as tf

    weights, bias = tf.constant(_WEIGHTS), tf.constant(_BIAS)

    def logits(x):
        return tf.reshape(x, (-1, 12)) @ weights + bias

    def forward(x):
        return logits(tf.constant(x)).numpy()

    def vjp(x, cotangent):
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = logits(x)
        return z.numpy(), tape.gradient(z, x, output_gradients=tf.constant(cotangent)).numpy()

    def ce_gradient(x, y):
        """The cross-entropy's gradient at x, by TensorFlow's own loss and tape: independent of audit.apgd."""
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(y), logits(x)))
        return tape.gradient(loss, x).numpy()

    return forward, vjp, ce_gradient


def _linear_images(n: int = 8) -> np.ndarray:
    x = np.full((n, 2, 2, 3), 0.5, np.float32)
    x.reshape(n, -1)[:, :9] = np.linspace(0.47, 0.53, n)[:, None]
    return x


def _off_the_exact_step(points, x, y, ce_gradient, steps: int) -> np.ndarray:
    """[steps, n]: whether iterate i + 1 is not APGD's step from iterate i along the exact gradient at iterate i.

    Before the first checkpoint the step size is 2 eps and the momentum 0.75 (none on the first step)."""
    lo, hi = np.maximum(x - LINEAR_EPS, 0.0), np.minimum(x + LINEAR_EPS, 1.0)
    off = []
    for i in range(steps):
        here, before = points[i], points[i - 1] if i else points[i]
        pull = 0.75 if i else 1.0
        stepped = np.clip(here + 2 * LINEAR_EPS * np.sign(ce_gradient(here, y)), lo, hi)
        expected = np.clip(here + pull * (stepped - here) + (1 - pull) * (here - before), lo, hi)
        off.append(np.abs(expected - points[i + 1]).reshape(len(x), -1).max(axis=1) > 1e-6)
    return np.array(off)


@pytest.mark.parametrize("stale", [False, True], ids=["exact", "stale"])
def test_each_step_follows_the_cross_entropys_gradient_at_the_iterate_itself(stale):
    forward, vjp, ce_gradient = _linear_served()
    x = _linear_images()
    y = np.zeros(len(x), np.int64)
    fw, vj = Recorder(forward), Recorder(vjp)
    run = apgd(vj, x, y, LINEAR_EPS, clean_logits=forward(x), loss="ce", iterations=100, rng=rng(), forward=fw,
               _stale=stale)
    assert not run.fooled.any()  # every image is in every call: call i holds iterate i
    points = [args[0] for args, _ in (vj.calls if stale else fw.calls)]
    first_checkpoint = checkpoints(100)[0]
    off = _off_the_exact_step(points, x, y, ce_gradient, first_checkpoint)
    # The fixture does what it is for: class 1's weight against class 2's changes sides between iterates.
    logits = np.stack([forward(p) for p in points[: first_checkpoint + 1]])
    heavier = np.exp(logits[..., 1]) > 6 * np.exp(logits[..., 2])
    assert (heavier[:-1] != heavier[1:]).any(axis=0).sum() >= 3
    if stale:
        # The previous iterate's cotangent steps the wrong way on the flipping values, once per image that flips.
        assert off.any(axis=0).sum() >= 3 and off.sum(axis=0).max() == 1
    else:
        assert not off.any()
        assert run.calls == len(fw.calls) + len(vj.calls) == 101 + 100
