"""What an audit result says: every interval, the worst class, the score without epsilon 0, the degenerate flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats  # an independent Wilson and binomial law (scipy comes with the test extras' ART)

from audit.results import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    DEGENERATE_SHARE,
    AuditResult,
    AuditSet,
    EpsilonPoint,
    SampleOutcome,
    balanced_max_share,
    bootstrap_balanced_interval,
    class_counts,
    max_share,
    wilson_interval,
)
from tests.audit_runs import make_result, one_class_result


@pytest.mark.parametrize(
    ("successes", "n", "lower", "upper"),
    [
        (64, 128, 0.4146, 0.5854),  # one image is 0.008; the interval is about +-0.085
        (0, 10, 0.0, 0.2775),  # never the 0-width interval of the normal approximation
        (10, 10, 0.7225, 1.0),
        (19, 128, 0.0971, 0.2202),  # a 0.148 plateau: anywhere from 0.10 to 0.22
        (0, 0, 0.0, 1.0),  # nothing counted: nothing known
    ],
)
def test_wilson_interval(successes, n, lower, upper):
    assert wilson_interval(successes, n) == (pytest.approx(lower, abs=1e-4), pytest.approx(upper, abs=1e-4))


@pytest.mark.parametrize(("successes", "n"), [(-1, 4), (5, 4), (1, -1)])
def test_wilson_interval_rejects_impossible_counts(successes, n):
    with pytest.raises(ValueError, match=rf"expected 0 <= successes <= n, got {successes} of {n}"):
        wilson_interval(successes, n)


def test_a_point_derives_its_worst_class_and_interval():
    point = EpsilonPoint("0.01", 0.5, 0.5, {"a": 0.75, "b": 0.25}, 8, 2, samples=128)
    assert point.worst_class_robust_accuracy == 0.25
    assert point.robust_interval == wilson_interval(64, 128)
    doc = point.to_json()
    assert (doc["robust_accuracy_lower"], doc["robust_accuracy_upper"]) == wilson_interval(64, 128)
    assert doc["worst_class_robust_accuracy"] == 0.25 and doc["per_class"] == {"a": 0.75, "b": 0.25}
    # Built the old way (no image count): the interval admits it knows nothing.
    assert EpsilonPoint("0.01", 0.5, 0.5, {}, 8, 2).robust_interval == (0.0, 1.0)
    assert EpsilonPoint("0.01", 0.5, 0.5, {}, 8, 2).worst_class_robust_accuracy is None


def test_the_robustness_score_leaves_epsilon_zero_out():
    assert make_result(robust=(0.9, 0.3, 0.1)).robustness_score == pytest.approx(0.2)
    assert make_result(robust=(0.9,), epsilons=("0",)).robustness_score == 0.0


def test_a_one_class_model_is_degenerate_and_its_worst_class_is_zero():
    result = one_class_result()
    # The plain figures flatter it: 0.5 at every epsilon, more than the trained model's score.
    assert result.robustness_score == 0.5 > make_result().robustness_score
    assert result.predicted_class_max_share == 1.0 and result.degenerate
    assert all(p.worst_class_robust_accuracy == 0.0 for p in result.points)
    assert not make_result().degenerate and make_result().predicted_class_max_share == 0.5


@pytest.mark.parametrize(("answered_a", "degenerate"), [(8, True), (7, False)])
def test_the_degenerate_threshold_is_a_class_balanced_share(answered_a, degenerate):
    # Ten images of each class; every a is answered a, and `answered_a` of the ten b too.
    samples = tuple(
        SampleOutcome(f"s{i}", i // 10, 0 if i < 10 + answered_a else 1, None, None) for i in range(20)
    )
    result = AuditResult(**{**make_result().__dict__, "samples": samples})
    assert result.balanced_predicted_class_max_share == pytest.approx((1 + answered_a / 10) / 2)
    assert result.degenerate is degenerate
    assert DEGENERATE_SHARE == 0.9 and max_share([]) == 0.0


# The pneumonia audit set is proportional to its test split: 18 normal, 30 pneumonia of 48.
PNEUMONIA = AuditSet("p" * 64, "d" * 64, "pneumonia:test", 0, 64, tuple(f"x{i}" for i in range(48)),
                     (0,) * 18 + (1,) * 30, ("normal", "pneumonia"))


def _pneumonia(normal_right: int, pneumonia_right: int) -> AuditResult:
    """A model on PNEUMONIA getting `normal_right` of 18 normal and `pneumonia_right` of 30 pneumonia images right."""
    answers = [0] * normal_right + [1] * (18 - normal_right) + [1] * pneumonia_right + [0] * (30 - pneumonia_right)
    samples = tuple(
        SampleOutcome(sid, label, answer, None if answer == label else "0", None)
        for sid, label, answer in zip(PNEUMONIA.sample_ids, PNEUMONIA.labels, answers)
    )
    return AuditResult(**{**make_result().__dict__, "audit_set": PNEUMONIA, "samples": samples})


def test_a_model_answering_pneumonia_94_percent_of_the_time_is_degenerate():
    # 45 of 48 answers are "pneumonia": under the plain 95% share of the rule before, it passed.
    always = _pneumonia(normal_right=3, pneumonia_right=30)
    assert always.predicted_class_max_share == pytest.approx(45 / 48) and 45 / 48 < 0.95
    assert always.balanced_predicted_class_max_share == pytest.approx((15 / 18 + 1) / 2)
    assert always.degenerate
    assert json.loads(json.dumps(always.to_json()))["degenerate"] is True
    # An honest model of the same task, and one leaning to pneumonia but still reading normal images, are not.
    honest = _pneumonia(normal_right=14, pneumonia_right=27)
    leaning = _pneumonia(normal_right=6, pneumonia_right=30)
    assert not honest.degenerate and honest.balanced_predicted_class_max_share < 0.6
    assert not leaning.degenerate


def test_balanced_max_share_weighs_each_true_class_equally():
    assert balanced_max_share([0, 0, 0, 1], [0, 0, 0, 0]) == (1.0, 0)
    assert balanced_max_share([0, 0, 0, 1], [0, 0, 0, 1]) == (0.5, 0)  # a tie: the lower class
    assert balanced_max_share([0, 0, 0, 1], [1, 1, 1, 0]) == (0.5, 0)
    assert balanced_max_share([], []) == (0.0, None)
    with pytest.raises(ValueError, match="expected one prediction per label, got 1 for 2"):
        balanced_max_share([0, 1], [0])


def _wilson_by_scipy(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def test_every_class_interval_matches_an_independent_wilson():
    # Counted from per-image outcomes: 3 of 18 normal and 25 of 30 pneumonia images still standing.
    correct = [True] * 3 + [False] * 15 + [True] * 25 + [False] * 5
    counts = class_counts(correct, PNEUMONIA.labels, PNEUMONIA.class_names)
    assert counts == {"normal": (3, 18), "pneumonia": (25, 30)}
    point = EpsilonPoint.counted("0.01", counts, attacked=40, fooled=12)
    assert (point.robust_accuracy, point.samples) == (28 / 48, 48)
    assert point.per_class == {"normal": 3 / 18, "pneumonia": 25 / 30}
    for name, (k, n) in counts.items():
        assert point.class_intervals[name] == pytest.approx(_wilson_by_scipy(k, n), abs=1e-12)
    assert point.robust_interval == pytest.approx(_wilson_by_scipy(28, 48), abs=1e-12)
    # The worst class is the one with the lowest figure, and its interval is that class's own.
    assert point.worst_class == "normal" and point.worst_class_robust_accuracy == 3 / 18
    assert point.worst_class_interval == pytest.approx(_wilson_by_scipy(3, 18), abs=1e-12)
    doc = json.loads(json.dumps(point.to_json()))
    assert doc["class_counts"] == {"normal": [3, 18], "pneumonia": [25, 30]}
    assert doc["worst_class"] == "normal"
    assert doc["worst_class_robust_accuracy_lower"] == pytest.approx(_wilson_by_scipy(3, 18)[0], abs=1e-12)
    assert doc["balanced_robust_accuracy_lower"] <= doc["balanced_robust_accuracy"] <= doc["balanced_robust_accuracy_upper"]


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 18), (18, 18), (7, 18), (119, 128), (1, 500)])
def test_wilson_matches_scipy_at_the_edges(k, n):
    assert wilson_interval(k, n) == pytest.approx(_wilson_by_scipy(k, n), abs=1e-12)


def test_of_two_equally_bad_classes_the_smaller_is_the_worst():
    point = EpsilonPoint.counted("0.01", {"a": (0, 40), "b": (0, 8), "c": (5, 10)}, attacked=0, fooled=0)
    assert point.worst_class == "b" and point.worst_class_interval == wilson_interval(0, 8)


def test_per_class_figures_that_disagree_with_their_counts_are_refused():
    with pytest.raises(ValueError, match=r"expected per_class to be the ratios of class_counts"):
        EpsilonPoint("0.01", 0.5, 0.5, {"a": 0.5, "b": 0.5}, 8, 2, samples=8, class_counts={"a": (1, 4), "b": (3, 4)})
    # Without counts (a point built before them) nothing is claimed beyond the mean's interval.
    old = EpsilonPoint("0.01", 0.5, 0.5, {"a": 0.5}, 8, 2, samples=8)
    assert old.intervals() == {
        "class_counts": None, "class_intervals": None, "worst_class": None, "worst_class_robust_accuracy_lower": None,
        "worst_class_robust_accuracy_upper": None, "balanced_robust_accuracy_lower": None, "balanced_robust_accuracy_upper": None,
    }


def test_the_balanced_bootstrap_is_deterministic_and_covers_its_estimate():
    counts = {"normal": (12, 18), "pneumonia": (25, 30)}
    estimate = (12 / 18 + 25 / 30) / 2
    first = bootstrap_balanced_interval(counts)
    assert first == bootstrap_balanced_interval(dict(reversed(counts.items())))  # the same draw, whatever the order
    assert first == bootstrap_balanced_interval(counts, seed=BOOTSTRAP_SEED, resamples=BOOTSTRAP_RESAMPLES)
    assert first[0] < estimate < first[1]
    assert bootstrap_balanced_interval(counts, seed=BOOTSTRAP_SEED + 1) != first  # the seed is what fixes it
    # Against the exact law of a stratified resample, (Binomial(18, 12/18)/18 + Binomial(30, 25/30)/30)/2:
    # 2000 resamples put each end within 0.02 of its exact quantile.
    x, y = np.arange(19), np.arange(31)
    values = ((x[:, None] / 18 + y[None, :] / 30) / 2).ravel()
    weights = (stats.binom.pmf(x, 18, 12 / 18)[:, None] * stats.binom.pmf(y, 30, 25 / 30)[None, :]).ravel()
    order = np.argsort(values)
    cdf = np.cumsum(weights[order])
    exact = values[order][np.searchsorted(cdf, 0.025)], values[order][np.searchsorted(cdf, 0.975)]
    assert first == (pytest.approx(exact[0], abs=0.02), pytest.approx(exact[1], abs=0.02))
    # A class with every image right or wrong still resamples to itself.
    assert bootstrap_balanced_interval({"a": (4, 4), "b": (0, 4)}) == (0.5, 0.5)
    assert bootstrap_balanced_interval({}) == (0.0, 1.0)


def test_clean_intervals_are_counted_from_the_outcomes():
    result = _pneumonia(normal_right=14, pneumonia_right=27)
    assert result.clean_counts == {"normal": (14, 18), "pneumonia": (27, 30)}
    assert result.clean_interval == pytest.approx(_wilson_by_scipy(41, 48), abs=1e-12)
    lower, upper = result.balanced_clean_interval
    assert lower < (14 / 18 + 27 / 30) / 2 < upper
    doc = result.to_json()
    assert (doc["clean_accuracy_lower"], doc["balanced_clean_accuracy_upper"]) == (result.clean_interval[0], upper)
    assert "2000 resamples, seed 0" in doc["intervals"]["balanced"] and doc["intervals"]["level"] == 0.95


def test_the_json_document_carries_every_new_figure():
    doc = json.loads(json.dumps(one_class_result().to_json(run_id=3)))
    assert doc["run_id"] == 3 and doc["degenerate"] is True and doc["predicted_class_max_share"] == 1.0
    assert doc["seed"] == 7 and doc["fooled_by"] == {"apgd-ce": 0, "square": 0}
    assert doc["robustness_score"] == 0.5
    point = doc["points"][1]
    assert point["worst_class_robust_accuracy"] == 0.0 and point["per_class"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert point["samples"] == 8
    assert (point["robust_accuracy_lower"], point["robust_accuracy_upper"]) == pytest.approx(wilson_interval(4, 8))
    assert len(doc["samples"]) == 8 and doc["audit_set"]["class_names"] == ["a", "b", "c"]
    # The attack side's fields default to nothing, so existing constructors still work.
    assert make_result().to_json()["fooled_by"] == {} and make_result().seed == 0


def test_the_json_names_the_budget_and_the_stages_run():
    from dataclasses import replace

    from tests.audit_runs import make_result

    reduced = replace(make_result(), attack="ensemble", steps=25, budget={"steps": 25, "queries": 300},
                      stages=("apgd_ce", "apgd_dlr", "fab_t", "square"))
    doc = reduced.to_json()
    assert doc["budget_label"] == "reduced (25 iterations, 300 queries)" == reduced.budget_label
    assert doc["budget"] == {"steps": 25, "queries": 300} and doc["stages"] == ["apgd_ce", "apgd_dlr", "fab_t", "square"]
    standard = replace(reduced, steps=100, budget={"steps": 100, "queries": 5000})
    assert standard.to_json()["budget_label"] == "standard"


def test_the_command_lines_table_names_the_budget_and_the_stages():
    from dataclasses import replace

    from medrobust.commands.audit import _table
    from tests.audit_runs import make_result

    reduced = replace(make_result(), attack="ensemble", steps=25, budget={"steps": 25, "queries": 300},
                      stages=("apgd_ce", "apgd_dlr", "fab_t", "square"))
    text = _table(reduced, 1)
    assert "budget: reduced (25 iterations, 300 queries)" in text.splitlines()[0]
    assert "stages, in turn on the images still standing: apgd_ce, apgd_dlr, fab_t, square" in text
    assert "budget: standard" in _table(replace(reduced, steps=100, budget={"steps": 100, "queries": 5000}), 2)


def test_a_stored_run_labels_its_budget_from_its_config_and_an_unregistered_attack_as_unknown(tmp_path):
    from audit.store import AuditStore
    from tests.audit_runs import CARD, make_result

    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    try:
        run_id = store.start_run(model="m", version=1, card=CARD, backend="embedded", attack="ensemble",
                                 config={"steps": 25, "queries": 300, "step_ratio": 2.5})
        store.finish_run(run_id, make_result(model="m"))
        run = store.get_run(run_id)
        assert run.budget_label == "reduced (25 iterations, 300 queries)" == run.to_json()["budget_label"]
        from dataclasses import replace

        assert replace(run, attack="retired_attack").budget_label == "unknown"
    finally:
        store.close()


def test_a_failed_gradient_check_makes_a_result_black_box_only_in_its_json_and_the_terminal():
    from audit.results import GRADIENT_CHECK, SanityCheck
    from medrobust.commands.audit import _table
    from tests.audit_runs import make_result

    honest = make_result(sanity=(SanityCheck(GRADIENT_CHECK, True, "agrees"),))
    assert not honest.black_box_only and honest.to_json()["black_box_only"] is False
    assert "BLACK-BOX ONLY" not in _table(honest, 1)
    lying = make_result(sanity=(SanityCheck(GRADIENT_CHECK, False, "disagrees"),), fooled_by={"square": 1})
    assert lying.black_box_only and lying.to_json()["black_box_only"] is True and not lying.sanity_passed
    assert "BLACK-BOX ONLY: the served gradient failed gradient_consistent, so linf_pgd was not run" in _table(lying, 1)
