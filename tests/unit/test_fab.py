"""FAB-T over the served `vjp`: the reference's figures on the same model and images, the projection, the checks."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from audit.fab import fab_targeted, projection_linf
from tests import fab_reference as ref
from tests.attack_models import Recorder

FIXTURE = Path(__file__).with_name("fab_reference.json")


@functools.cache
def _model():
    x, labels = ref.images_and_labels()
    logits_and_gradient, logits = ref.served_tf()
    return x, labels, logits_and_gradient, logits(x)


def _reference(eps: float) -> dict:
    return json.loads(FIXTURE.read_text())["epsilons"][str(eps)]


def _size(adversarial: np.ndarray, x: np.ndarray) -> np.ndarray:
    size: np.ndarray = np.abs(adversarial.astype(np.float64) - x).reshape(len(x), -1).max(axis=1)
    return size


def test_the_fixture_is_the_model_and_images_of_this_module():
    """The reference ran on these images: its clean predictions are the labels but for the mislabelled two."""
    x, labels, _, clean_logits = _model()
    wrong = np.flatnonzero(clean_logits.argmax(axis=1) != labels)
    assert tuple(wrong) == ref.MISLABELLED
    np.testing.assert_allclose(clean_logits, ref.logits_numpy(x), atol=1e-5)
    fooled = {eps: sum(_reference(eps)["fooled"]) for eps in ref.EPSILONS}
    assert 2 < fooled[0.01] < fooled[0.02] < fooled[0.04] < fooled[0.08] == ref.IMAGES  # the grid spans the range


# One epsilon in the quick tier (each takes a few seconds); every one in the slow.
QUICK_AND_SLOW = [pytest.param(e, marks=() if e == 0.02 else pytest.mark.slow) for e in ref.EPSILONS]


@pytest.mark.parametrize("eps", QUICK_AND_SLOW)
def test_fools_the_images_the_reference_fools(eps):
    x, labels, logits_and_gradient, clean_logits = _model()
    run = fab_targeted(logits_and_gradient, x, labels, eps, clean_logits=clean_logits, n_target=9)
    np.testing.assert_array_equal(run.fooled.astype(int), _reference(eps)["fooled"])
    assert _size(run.adversarial, x).max() <= eps + 1e-7
    np.testing.assert_array_equal(run.fooled, ref.logits_numpy(run.adversarial).argmax(axis=1) != labels)
    unfooled = ~run.fooled
    np.testing.assert_array_equal(run.adversarial[unfooled], x[unfooled])  # returned clean, as the reference's


@pytest.mark.slow
@pytest.mark.parametrize("eps", ref.EPSILONS)
def test_minimising_finds_the_reference_perturbations(eps):
    """Run to the end as the reference does, each example is the reference's, to float32 rounding."""
    x, labels, logits_and_gradient, clean_logits = _model()
    run = fab_targeted(logits_and_gradient, x, labels, eps, clean_logits=clean_logits, minimise=True)
    np.testing.assert_array_equal(run.fooled.astype(int), _reference(eps)["fooled"])
    np.testing.assert_allclose(_size(run.adversarial, x), _reference(eps)["size"], atol=1e-6)


def test_stops_iterating_an_image_once_fooled_within_epsilon():
    x, labels, logits_and_gradient, clean_logits = _model()
    eps = 0.02
    record = Recorder(logits_and_gradient)
    run = fab_targeted(record, x, labels, eps, clean_logits=clean_logits, iterations=20)
    sent = [args[0] for args, _ in record.calls]
    for i in np.flatnonzero(run.fooled):
        if i in ref.MISLABELLED:
            assert not any((np.abs(p - x[i]).max(axis=(1, 2, 3)) == 0).any() for p in sent)  # never attacked
            continue
        seen = [c for c, p in enumerate(sent) if (p == run.adversarial[i]).all(axis=(1, 2, 3)).any()]
        # After its example was sent, the image comes back once more at most: stepped back towards x, it
        # is then dropped (its gradient is not asked for again).
        assert seen, f"image {i}'s example was never sent"
        later = [c for c, p in enumerate(sent[seen[-1] + 1 :]) if (np.abs(p - x[i]).max(axis=(1, 2, 3)) <= eps).any()]
        assert not later, f"image {i} was iterated after its example within epsilon"
    calls_minimising = Recorder(logits_and_gradient)
    fab_targeted(calls_minimising, x, labels, eps, clean_logits=clean_logits, iterations=20, minimise=True)
    assert sum(len(a[0]) for a, _ in record.calls) < sum(len(a[0]) for a, _ in calls_minimising.calls)


def test_gradient_is_asked_for_the_margin_to_each_target_in_turn():
    """Cotangents are e_t - e_y, t the other classes by clean logit, highest first (APGD-T's targets)."""
    x, labels, logits_and_gradient, clean_logits = _model()
    record = Recorder(logits_and_gradient)
    keep = [i for i in range(len(x)) if i not in ref.MISLABELLED][:4]
    fab_targeted(record, x[keep], labels[keep], 1e-4, clean_logits=clean_logits[keep], iterations=2)
    cotangents = np.concatenate([args[1] for args, _ in record.calls])
    y = labels[keep]
    order = np.argsort(-np.where(np.eye(ref.CLASSES)[y] > 0, -np.inf, clean_logits[keep]), axis=1)[:, :3]
    expected = {tuple(np.eye(ref.CLASSES)[t] - np.eye(ref.CLASSES)[yi]) for yi, ts in zip(y, order) for t in ts}
    assert {tuple(c) for c in cotangents} == expected
    first = record.calls[0][0][1]
    np.testing.assert_array_equal(first.argmax(axis=1), order[:, 0])  # the highest other class first


def test_nothing_is_asked_at_epsilon_zero_or_when_every_image_is_misclassified():
    x, labels, logits_and_gradient, clean_logits = _model()
    record = Recorder(logits_and_gradient)
    run = fab_targeted(record, x, labels, 0.0, clean_logits=clean_logits)
    assert not record.calls and run.calls == 0 and tuple(np.flatnonzero(run.fooled)) == ref.MISLABELLED
    wrong = list(ref.MISLABELLED)
    run = fab_targeted(record, x[wrong], labels[wrong], 0.1, clean_logits=clean_logits[wrong])
    assert not record.calls and run.fooled.all()


def _reach(t: np.ndarray, w: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """The largest w.d over |d|_inf <= radius with t + d in [0, 1]: each coordinate to its bound."""
    up = np.minimum(radius[:, None], 1 - t)
    down = np.minimum(radius[:, None], t)
    reach: np.ndarray = np.where(w > 0, w * up, -w * down).sum(axis=1)
    return reach


def test_projection_is_the_smallest_linf_step_onto_the_hyperplane_in_the_box():
    rng = np.random.default_rng(3)
    m, dims = 200, 12
    t = rng.uniform(0, 1, (m, dims))
    t[:, :3] = rng.choice([0.0, 1.0], (m, 3))  # coordinates on the box's faces
    w = rng.normal(size=(m, dims))
    w[:, 3] = 0.0  # a coordinate the hyperplane ignores must not move
    c = rng.uniform(-1, 1, m) * np.abs(w).sum(axis=1) * 0.5  # what w.d must reach, sometimes out of the box
    b = (w * t).sum(axis=1) + c
    d = projection_linf(t, w, b)
    assert (d[:, 3] == 0).all()
    assert (t + d >= -1e-12).all() and (t + d <= 1 + 1e-12).all()
    radius = np.abs(d).max(axis=1)
    reachable = _reach(t, w * np.sign(c)[:, None], np.full(m, 1.0)) >= np.abs(c)
    assert 0 < reachable.sum() < m  # both cases occur
    got = (w * d).sum(axis=1)
    np.testing.assert_allclose(got[reachable], c[reachable], atol=1e-9)
    # Minimal: a ball any smaller cannot reach the hyperplane.
    smaller = _reach(t[reachable], (w * np.sign(c)[:, None])[reachable], radius[reachable] * (1 - 1e-6))
    assert (smaller < np.abs(c[reachable])).all()
    # Out of reach: the box corner towards the hyperplane, as far as the box goes.
    towards = np.sign(c)[:, None] * np.sign(w)
    corner = np.where(towards > 0, 1 - t, -t) * (w != 0)
    np.testing.assert_allclose(d[~reachable], corner[~reachable], atol=1e-12)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"iterations": 0}, "expected iterations >= 1, got 0"),
        ({"n_target": 0}, "expected n_target >= 1, got 0"),
        ({"alpha_max": 1.5}, "expected 0 <= alpha_max <= 1, got 1.5"),
        ({"eta": 0.5}, "expected eta >= 1 (an overshoot), got 0.5"),
        ({"beta": 1.0}, "expected 0 < beta < 1, got 1.0"),
        ({"epsilon": -0.1}, "expected epsilon >= 0, got -0.1"),
        ({"labels": np.zeros(3, np.int64)}, "expected integer labels of shape (24,), got int64 (3,)"),
    ],
)
def test_bad_arguments_are_refused_with_what_was_expected(override, message):
    x, labels, logits_and_gradient, clean_logits = _model()
    kwargs = {"labels": labels, "epsilon": 0.01, **override}
    with pytest.raises(ValueError, match=re.escape(message)):
        fab_targeted(logits_and_gradient, x, kwargs.pop("labels"), kwargs.pop("epsilon"), clean_logits=clean_logits,
                     **kwargs)
