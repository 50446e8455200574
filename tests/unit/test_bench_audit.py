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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
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
        "--queries", "3", "--epochs", "0", "--repeats", "2",
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

