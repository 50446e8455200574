"""What an audit result says: the Wilson interval, the worst class, the score without epsilon 0, the degenerate flag."""

from __future__ import annotations

import json

import pytest

from audit.results import DEGENERATE_SHARE, AuditResult, EpsilonPoint, SampleOutcome, max_share, wilson_interval
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


@pytest.mark.parametrize(("dominant", "degenerate"), [(19, True), (18, False)])
def test_the_degenerate_threshold_is_a_share_of_the_audit_set(dominant, degenerate):
    samples = tuple(SampleOutcome(f"s{i}", i % 2, 0 if i < dominant else 1, None, None) for i in range(20))
    result = AuditResult(**{**make_result().__dict__, "samples": samples})
    assert result.predicted_class_max_share == dominant / 20
    assert result.degenerate is degenerate
    assert DEGENERATE_SHARE == 0.95 and max_share([]) == 0.0


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
