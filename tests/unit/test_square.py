"""Square Attack over the served `logits`: the ball, the query accounting, the schedule, the argument checks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from audit.attack_run import true_class_margin
from audit.square import p_schedule, square_linf
from tests.attack_models import EPSILON, Case, Recorder, assert_first_fooling_point_kept, case, rng

QUERIES = 150


@pytest.fixture
def four() -> Case:
    return case(4)


def _reference_p_selection(it: int, p_init: float) -> float:
    """auto-attack's SquareAttack.p_selection with resc_schedule=False (AutoAttack's standard setting), verbatim."""
    if 10 < it <= 50:
        return p_init / 2
    if 50 < it <= 200:
        return p_init / 4
    if 200 < it <= 500:
        return p_init / 8
    if 500 < it <= 1000:
        return p_init / 16
    if 1000 < it <= 2000:
        return p_init / 32
    if 2000 < it <= 4000:
        return p_init / 64
    if 4000 < it <= 6000:
        return p_init / 128
    if 6000 < it <= 8000:
        return p_init / 256
    if 8000 < it:
        return p_init / 512
    return p_init


def test_p_halves_at_the_reference_query_counts_whatever_the_budget():
    halvings = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
    assert p_schedule(0, 0.8) == 0.8
    for j, h in enumerate(halvings):
        assert p_schedule(h, 0.8) == 0.8 / 2**j
        assert p_schedule(h + 1, 0.8) == 0.8 / 2 ** (j + 1)
    for step in (*range(0, 600), 999, 1000, 1001, 2500, 4999, 5000, 7000, 8001, 9999):
        assert p_schedule(step, 0.8) == _reference_p_selection(step, 0.8), step
    # Not rescaled: at query 240 of a 300-query budget the square is the standard's, 20 px of a 64 px side.
    assert round(np.sqrt(p_schedule(240, 0.8) * 64 * 64)) == 20


def test_a_small_budget_keeps_the_standard_squares(four, monkeypatch):
    """The square sides a 30-query run draws are those of the first 30 queries of the standard 5000."""
    import audit.square as square_module

    seen = []
    real = square_module.p_schedule
    monkeypatch.setattr(square_module, "p_schedule", lambda step, p_init: seen.append(step) or real(step, p_init))
    square_linf(four.logits, four.images[:2], four.labels[:2], 1e-4, clean_logits=four.clean_logits[:2],
                queries=30, rng=rng())
    assert seen == list(range(29))


@pytest.mark.parametrize("eps", [EPSILON, 0.3])
def test_adversarials_stay_in_the_ball_and_in_unit_range(four, eps):
    images = four.images.copy()
    images[:4, :8] = 0.0
    images[4:8, -8:] = 1.0
    run = square_linf(four.logits, images, four.labels, eps, clean_logits=four.logits(images), queries=50, rng=rng())
    distance = np.abs(run.adversarial.astype(np.float64) - images.astype(np.float64)).max(axis=(1, 2, 3))
    assert run.adversarial.dtype == np.float32 and distance.max() <= eps + 1e-6
    assert run.adversarial.min() >= 0.0 and run.adversarial.max() <= 1.0


def test_stops_querying_an_image_once_fooled(four):
    record = Recorder(four.logits)
    run = square_linf(record, four.images, four.labels, EPSILON, clean_logits=four.clean_logits, queries=QUERIES,
                      rng=rng())
    assert 0 < run.fooled.sum() < len(run.fooled)
    visits = record.visits(four.images, EPSILON)
    assert_first_fooling_point_kept(run, visits, four.images, four.labels, four.clean_logits)
    correct = four.clean_logits.argmax(axis=1) == four.labels
    for i in np.flatnonzero(correct & ~run.fooled):
        assert len(visits[i]) == QUERIES  # the budget, the stripe start included
    np.testing.assert_array_equal(run.fooled, ~four.robust(run.adversarial))


def test_one_batched_call_per_step_and_margins_per_call(four):
    record = Recorder(four.logits)
    run = square_linf(record, four.images, four.labels, EPSILON, clean_logits=four.clean_logits, queries=QUERIES,
                      rng=rng())
    assert run.calls == len(record.calls) == len(run.margins) == QUERIES  # some image stood to the end
    assert (np.diff(run.margins, axis=0) <= 0).all()
    # Only improvements are accepted, so the example's margin, as the model sees it, is the lowest recorded.
    np.testing.assert_allclose(true_class_margin(four.logits(run.adversarial), four.labels), run.margins[-1],
                               atol=1e-5)


def test_starts_from_vertical_stripes(four):
    record = Recorder(four.logits)
    square_linf(record, four.images, four.labels, EPSILON, clean_logits=four.clean_logits, queries=1, rng=rng())
    correct = four.clean_logits.argmax(axis=1) == four.labels
    start = record.calls[0][0][0]
    sign = np.sign(start - four.images[correct])  # the tinted images lie well inside [0, 1]: nothing is clipped
    assert (sign != 0).all()
    assert (sign == sign[:, :1]).all(), "each column and channel has one sign down the image"
    assert len(record.calls) == 1


def test_every_image_fooled_ends_the_attack(four):
    record = Recorder(four.logits)
    run = square_linf(record, four.images, four.labels, 0.3, clean_logits=four.clean_logits, queries=QUERIES,
                      rng=rng())
    assert run.fooled.all() and run.calls == len(record.calls) < QUERIES


def test_epsilon_zero_is_a_no_op_without_calls(four):
    record = Recorder(four.logits)
    run = square_linf(record, four.images, four.labels, 0.0, clean_logits=four.clean_logits, rng=rng())
    np.testing.assert_array_equal(run.adversarial, four.images)
    np.testing.assert_array_equal(run.fooled, four.clean_logits.argmax(axis=1) != four.labels)
    assert run.calls == 0 and record.calls == [] and run.margins.shape == (1, len(four.labels))


def _never_called(_x):
    raise AssertionError("the model must not be called for bad arguments")


X = np.full((2, 4, 4, 3), 0.5, np.float32)
Y = np.zeros(2, np.int64)
Z = np.array([[1.0, 0.0, 0.0]] * 2, np.float32)
BAD = [
    ({"queries": 0}, "expected queries >= 1, got 0"),
    ({"p_init": 0.0}, "expected 0 < p_init <= 1, got 0.0"),
    ({"p_init": 1.5}, "expected 0 < p_init <= 1, got 1.5"),
    ({"epsilon": -1}, "expected epsilon >= 0, got -1"),
    ({"rng": 0}, "expected rng to be a numpy.random.Generator, got int"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_arguments_say_what_was_expected(change, message):
    args = {"epsilon": 0.1, "clean_logits": Z, "rng": rng(), **change}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        square_linf(_never_called, X, Y, args.pop("epsilon"), **args)
