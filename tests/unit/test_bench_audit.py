"""bench.audit: sides alternate, P and I are the arithmetic they claim, and a tiny run ends with one JSON line."""

from __future__ import annotations

import json

import pytest

from bench import audit as bench


def _run(seconds: float, work: int) -> bench.Run:
    return bench.Run(seconds=seconds, work=work, image_attacks=work, robust=(1.0,) * len(bench.EPSILONS))


def test_repeated_runs_alternate_the_sides_so_load_drift_hits_each():
    calls = []

    def side(name):
        def run():
            calls.append(name)
            return _run(1.0, 10)

        return run

    sides = bench.alternate({name: side(name) for name in "abc"}, repeats=3)
    assert calls == list("abc" "cba" "abc")
    assert [len(s.seconds) for s in sides.values()] == [3, 3, 3]


def test_pruning_and_per_step_cost_are_reported_apart():
    sides = {"medrobust": bench.Side("medrobust"), "tf_function": bench.Side("tf_function")}
    for seconds, work in ((6.0, 100), (4.0, 100)):  # 0.05 s per step over both runs
        sides["medrobust"].add(_run(seconds, work))
    for seconds, work in ((4.0, 200), (4.0, 200)):  # 0.02 s per step: more work, cheaper steps
        sides["tf_function"].add(_run(seconds, work))
    result = bench._ratios(sides, full_work=1000)
    assert result["medrobust"]["pruning_factor"] == 10.0  # 1000 un-nested steps per run / 100 run
    assert result["tf_function"]["pruning_factor"] == 5.0
    assert result["medrobust"]["cost_ratio"] == 2.5  # 0.05 / 0.02: slower per step although faster in wall time
    assert result["tf_function"]["cost_ratio"] == 1.0
    assert result["medrobust"]["ms_per_unit"] == 50.0


def test_a_side_that_did_no_work_has_no_cost_per_step():
    sides = {"medrobust": bench.Side("medrobust"), "tf_function": bench.Side("tf_function")}
    sides["medrobust"].add(_run(1.0, 0))
    sides["tf_function"].add(_run(1.0, 10))
    result = bench._ratios(sides, full_work=90)
    assert result["medrobust"]["ms_per_unit"] is None and result["medrobust"]["cost_ratio"] is None
    assert result["medrobust"]["pruning_factor"] is None


def test_exact_against_stale_reports_both_sides_and_their_ratios():
    import numpy as np

    sides = {"exact": bench.Side("exact"), "stale": bench.Side("stale")}
    robust = (1.0,) * 3
    for seconds in (3.0, 5.0):  # 100 image-iterations a run, 41 calls: 21 forwards, 20 vjp
        sides["exact"].add(bench.Run(seconds, 100, 10, robust, {
            "calls": 41, "served_forward_images": 100, "served_vjp_images": 90,
            "standing": [np.array([True, True]), np.array([True, False]), np.array([False, False])]}))
    for seconds in (2.0, 2.0):  # the same work in 21 calls of one vjp
        sides["stale"].add(bench.Run(seconds, 100, 10, robust, {
            "calls": 21, "served_forward_images": 0, "served_vjp_images": 100,
            "standing": [np.array([True, True]), np.array([True, True]), np.array([False, False])]}))
    out = bench._exactness("ce", 25, False, sides)
    assert out["ratios"] == {"seconds": 2.0, "ms_per_image_iteration": 2.0, "calls": 1.952, "served_images": 1.9}
    assert out["verdicts_differ"] == [0, 1, 0]
    assert out["sides"]["exact"]["ms_per_image_iteration"] == 40.0 and out["sides"]["stale"]["seconds_total"] == 4.0
    assert "standing" not in out["sides"]["exact"]  # the masks are compared, not printed
    json.dumps(out)
    text = "\n".join(bench.exactness_table({"classes": 7, "images": 2, "epsilons": ["0", "0.01", "0.32"],
                                            "comparisons": [out]}, repeats=2))
    assert "APGD-CE, 25 iterations, on 2 images, K = 7" in text and "exact/stale" in text
    assert "robust accuracy @ 0.01 (verdicts differing)" in text


def test_exactness_settings_parse_and_zero_skips():
    s = bench.parse_args(["--exactness-steps", "25,100", "--exactness-losses", "ce", "--exactness-epsilons", "0,0.01"])
    assert (s.exactness_steps, s.exactness_losses, s.exactness_epsilons) == ((25, 100), ("ce",), ("0", "0.01"))
    assert bench.parse_args(["--exactness-steps", "0"]).exactness_steps == ()
    assert bench.parse_args([]).exactness_losses == ("ce", "dlr")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--exactness-steps", "25,-1"], "--exactness-steps: expected budgets of at least 1 iteration, got (25, -1)"),
        (["--exactness-steps", "x"], "expected comma-separated whole numbers, got 'x'"),
        (["--exactness-losses", "ce,l2"], "--exactness-losses: expected some of ce,dlr, got ['l2']"),
        (["--exactness-epsilons", "0.03"], "--exactness-epsilons: expected some of the paper's grid"),
        (["--image-size", "16"], "--image-size: expected at least 32 (ResNet-50's minimum), got 16"),
        (["--samples", "0"], "--samples: expected at least 1, got 0"),
        (["--epochs", "-1"], "--epochs: expected at least 0, got -1"),
        (["--apgd-steps", "0"], "--apgd-steps: expected at least 1, got 0"),
    ],
)
def test_bad_settings_are_refused_before_any_model_is_built(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _consistent(section: dict) -> None:
    """I = (seconds / work) of a side over the reference's; P = un-nested work / nested work; from the printed figures."""
    sides = section["sides"]
    ref = sides[section["reference"]]
    for side in sides.values():
        runs = len(side["seconds"])
        assert side["seconds_total"] == pytest.approx(sum(side["seconds"]), abs=2e-3)
        assert side["pruning_factor"] == pytest.approx(side["full_work_per_run"] * runs / side["work_total"], rel=1e-3)
        per_step = side["seconds_total"] / side["work_total"]
        assert side["ms_per_unit"] == pytest.approx(1000 * per_step, rel=1e-3)
        assert side["cost_ratio"] == pytest.approx(per_step / (ref["seconds_total"] / ref["work_total"]), rel=5e-3)
    assert ref["cost_ratio"] == 1.0


@pytest.mark.slow  # exports a ResNet-50 and traces three compiled loops: one to several minutes on 2 shared cores
@pytest.mark.bench
def test_a_tiny_run_prints_tables_then_one_json_line_whose_ratios_match_its_times(capsys):
    argv = [
        "--samples", "6", "--compare-samples", "6", "--image-size", "32", "--steps", "2", "--apgd-steps", "2",
        "--queries", "3", "--epochs", "0", "--repeats", "2", "--exactness-steps", "2", "--exactness-epsilons", "0,0.01,0.32",
    ]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(lines[:-1])
    for label in ("load average", "P pruning", "I cost per image-attack-step", "I cost per image-iteration", "ensemble ("):
        assert label in text
    result = json.loads(lines[-1])
    assert {"settings", "pgd", "apgd_ce", "ensemble", "apgd_ce_cost_ratio", "goals_met", "machine", "total_seconds"} <= set(result)
    assert set(result["pgd"]["sides"]) == {"medrobust", "foolbox_keras", "tf_function"}
    assert set(result["apgd_ce"]["sides"]) == {"medrobust", "tf_function"}
    for section in ("pgd", "apgd_ce"):
        for side in result[section]["sides"].values():
            assert len(side["seconds"]) == 2 and side["work_total"] > 0
            assert len(side["robust_accuracy"]) == len(bench.EPSILONS)
        _consistent(result[section])
    pgd = result["pgd"]["sides"]
    # Every PGD side runs the same steps on the images it attacks: work = image-attacks x steps.
    assert all(s["work_per_run"] == 2 * s["image_attacks_per_run"] for s in pgd.values())
    assert result["pgd"]["sides"]["medrobust"]["full_work_per_run"] == 6 * 9 * 2  # images x non-zero epsilons x steps
    assert result["apgd_ce_cost_ratio"] == result["apgd_ce"]["sides"]["medrobust"]["cost_ratio"]
    assert result["goals_met"] == {"apgd_ce_within_1.3x_compiled": result["apgd_ce_cost_ratio"] <= 1.3}
    ensemble = result["ensemble"]
    assert ensemble["images"] == 6 and ensemble["image_size"] == 32 and ensemble["square_queries"] == 3
    assert ensemble["budget_label"].startswith("reduced (") and ensemble["stages"][2:] == ["fab_t", "square"]
    assert ensemble["seconds"] > 0 and len(ensemble["robust_accuracy"]) == len(bench.EPSILONS)
    assert "ensemble: skipped (--no-ensemble)" in bench.table({**result, "ensemble": None})
    # The synthetic set has three classes: exact APGD-CE and APGD-DLR take a forward beside each vjp.
    exactness = result["exactness"]
    assert exactness["classes"] == 3 and [c["loss"] for c in exactness["comparisons"]] == ["ce", "dlr"]
    for c in exactness["comparisons"]:
        exact, stale = c["sides"]["exact"], c["sides"]["stale"]
        assert not c["one_call_exact"] and len(exact["seconds"]) == len(stale["seconds"]) == 2
        assert stale["served_forward_images"] == 0 and exact["served_forward_images"] > exact["served_vjp_images"]
        assert exact["calls"] > stale["calls"] and len(c["verdicts_differ"]) == 3
        assert c["ratios"]["seconds"] == pytest.approx(exact["seconds_total"] / stale["seconds_total"], rel=5e-3)
    assert "APGD-DLR, 2 iterations, on 6 images, K = 3" in text
    skipped = bench.table({**result, "pgd": None, "apgd_ce": None, "exactness": None})
    assert "PGD and APGD-CE against the compiled loops: skipped (--no-compiled)" in skipped

