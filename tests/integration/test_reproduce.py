"""`medrobust reproduce` end to end in its quick mode: the whole grid, every output, resumption, and
re-auditing the finished grid with a second attack."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import medrobust.reproduce_grid as grid
from medrobust.cli import main
from medrobust.reproduce_report import MANIFEST, RESULTS_JSON, RESULTS_MD, figure_name

# Two tiny trainings, exports and audits: ~4 minutes on 2 cores. One seed: how seeds are summed, and seeds one
# attack has not audited yet, are the report's logic, tested on stored states in tests/unit/test_reproduce_report.py.
pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]
EPSILONS = ("0.01", "0.04", "0.16")
CELLS = ("resnet50/baseline/seed-0", "resnet50/attention/seed-0")


def _reproduce(out, *extra: str) -> int:
    return main([
        "reproduce", "--task", "demo", "--dataset", "synthetic:90", "--backbones", "resnet50", "--image-size", "32",
        "--epochs", "1", "--limit", "40", "--seeds", "0", "--samples", "8", "--epsilons", ",".join(EPSILONS),
        "--steps", "2", "--out", str(out), *extra,
    ])


class SimulatedCrash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Run the grid, crash at the start of the second cell, rerun; record which cells were trained."""
    out = tmp_path_factory.mktemp("reproduce")
    real = grid.train_and_export
    trained: list[tuple[str, dict]] = []
    crash_at = {2}

    def counting(dataset, variant, **kwargs):
        key = f"{variant.backbone}/{'attention' if variant.attention else 'baseline'}/seed-{kwargs['recipe'].seed}"
        trained.append((key, kwargs))
        if len(trained) in crash_at:
            crash_at.clear()
            raise SimulatedCrash(f"simulated crash while training {key}")
        return real(dataset, variant, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grid, "train_and_export", counting)
        with pytest.raises(SimulatedCrash):
            _reproduce(out)
        after_crash = json.loads((out / grid.STATE_FILE).read_text())
        first = [key for key, _ in trained]
        assert _reproduce(out) == 0
        second = [key for key, _ in trained[len(first):]]
        assert _reproduce(out) == 0  # everything finished: only the report is redrawn
        third = [key for key, _ in trained[len(first) + len(second):]]
    return out, after_crash, first, second, third, trained


def test_a_rerun_trains_only_the_cells_that_had_not_finished(resumed):
    out, after_crash, first, second, third, _ = resumed
    assert first == list(CELLS[:2])
    assert set(after_crash["cells"]) == {CELLS[0]} and "audit" in after_crash["cells"][CELLS[0]]
    assert second == list(CELLS[1:]), "the finished first cell must not be trained again"
    assert third == []


def test_training_is_resumable_from_the_cells_checkpoint(resumed):
    *_, trained = resumed
    assert all(kwargs["resume"] is True and kwargs["workdir"] is not None for _, kwargs in trained)
    assert len({str(kwargs["workdir"]) for _, kwargs in trained}) == len(CELLS)


def test_every_cell_is_audited_on_the_same_images_over_the_grid(resumed):
    out, *_ = resumed
    state = json.loads((out / grid.STATE_FILE).read_text())
    assert sorted(state["cells"]) == sorted(CELLS)
    assert all(grid.cell_audits(cell).keys() == {"linf_pgd"} for cell in state["cells"].values())
    audits = [cell["audit"] for cell in state["cells"].values()]
    assert len({a["audit_set"] for a in audits}) == 1 and {a["audit_set_size"] for a in audits} == {8}
    for a in audits:
        assert a["attack"] == "linf_pgd" and a["budget"] == {"restarts": 1, "steps": 2}
        assert [p["epsilon"] for p in a["points"]] == ["0", *EPSILONS]
        assert a["points"][0]["robust_accuracy"] == a["clean_accuracy"]
        assert all(p["robust_accuracy_lower"] <= p["robust_accuracy"] <= p["robust_accuracy_upper"] for p in a["points"])
        assert isinstance(a["degenerate"], bool) and 0 < a["predicted_class_max_share"] <= 1
    # Each variant is a model in the grid's own repository (a further seed is its next version).
    versions = sorted((c["train"]["model"], c["train"]["version"]) for c in state["cells"].values())
    assert versions == [("demo-resnet50-attention", 1), ("demo-resnet50-baseline", 1)]
    assert not (out / "work").exists() or not any((out / "work").iterdir()), "finished cells leave no checkpoints"


def test_writes_the_figure_the_tables_and_the_manifest(resumed):
    out, *_ = resumed
    figure = out / figure_name("demo", "resnet50")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    results = json.loads((out / RESULTS_JSON).read_text())
    assert [r["attack"] for r in results["results"]] == ["linf_pgd"]
    entry = results["results"][0]["backbones"]["resnet50"]
    for variant in ("baseline", "attention"):
        stats = entry["variants"][variant]
        assert stats["seeds"] == [0] and stats["clean_accuracy"]["n"] == 1
        assert set(stats["robust_accuracy"]) == {"0", *EPSILONS}
    gain = entry["attention_gain"]["robust_accuracy"]["0.04"]
    expected = [a - b for a, b in zip(entry["variants"]["attention"]["robust_accuracy"]["0.04"]["values"],
                                      entry["variants"]["baseline"]["robust_accuracy"]["0.04"]["values"])]
    assert gain["values"] == pytest.approx(expected)
    table = (out / RESULTS_MD).read_text()
    assert "| attention gain |" in table and all(f"ε={e} |" in table for e in EPSILONS)
    assert "- **PGD** (`linf_pgd`; the paper's attack): 2 steps, 1 restart; budget: reduced (2 steps); 2 models." in table
    assert "Worst-class robust accuracy" in table
    assert figure.name in table
    manifest = json.loads((out / MANIFEST).read_text())
    statuses = [i["status"] for i in manifest["invocations"]]
    assert statuses[0].startswith("failed: SimulatedCrash") and statuses[1:] == ["succeeded", "succeeded"]
    assert manifest["seeds"] == [0]
    assert manifest["invocations"][0]["environment"]["packages"]["tensorflow"]
    assert all(i["wall_seconds"] >= 0 for i in manifest["invocations"])
    assert all(c["finished"] and c["train_seconds"] > 0 and c["audit_seconds"] > 0 for c in manifest["cells"].values())


def test_refuses_to_mix_experiments_in_one_out_directory(resumed, capsys):
    out, *_ = resumed
    assert _reproduce(out, "--steps", "3") == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backbones", "inception_resnet_v2", "--image-size", "32"], "needs --image-size >= 75"),
        (["--backbones", "resnet50", "--epsilons", "0.1,-1"], "expected a finite epsilon >= 0"),
        (["--backbones", "resnet50", "--epoch-fraction", "0"], "expected --epoch-fraction in (0, 1]"),
    ],
)
def test_bad_arguments_get_a_clear_error(tmp_path, capsys, argv, message):
    code = main(["reproduce", "--dataset", "synthetic:90", "--out", str(tmp_path / "out"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / grid.STATE_FILE).exists()


def test_merge_adds_the_finished_cells_of_other_runs_without_overriding_its_own(tmp_path):
    from medrobust.reproduce_grid import Cell, GridConfig, GridState, merged

    config = GridConfig(
        task="demo", dataset="synthetic:90", backbones=("resnet50",), image_sizes=(32,), epochs=1, limit=40,
        seeds=(0, 1), samples=8, epsilons=("0", "0.01"), steps=2,
    )
    mine, other = GridState.open(tmp_path / "a", config), GridState.open(tmp_path / "b", config)
    mine.record(Cell("resnet50", False, 0), "audit", {"clean_accuracy": 0.5})
    other.record(Cell("resnet50", False, 0), "audit", {"clean_accuracy": 0.9})
    other.record(Cell("resnet50", False, 1), "audit", {"clean_accuracy": 0.7})
    other.record(Cell("resnet50", True, 1), "train", {"version": 3})  # unfinished: not merged
    doc = merged(mine, [other])
    assert doc["cells"]["resnet50/baseline/seed-0"]["audit"] == {"clean_accuracy": 0.5}
    assert doc["cells"]["resnet50/baseline/seed-1"]["out"] == str(tmp_path / "b")
    assert "resnet50/attention/seed-1" not in doc["cells"]
    assert "resnet50/baseline/seed-1" not in mine.doc["cells"], "merging must not write into the state"


def _finished(state, cell, clean: float) -> None:
    """Record a cell as if trained and audited (fixed figures, so the report's arithmetic is checkable)."""
    state.record(cell, "train", {"model": f"demo-resnet50-{cell.variant}", "version": cell.seed + 1, "seconds": 1.0,
                                 "images_per_second": 1.0, "epochs_trained": 1, "test_accuracy": clean})
    state.record(cell, "audit", {
        "model": f"demo-resnet50-{cell.variant}", "version": cell.seed + 1, "clean_accuracy": clean,
        "balanced_clean_accuracy": clean, "robustness_score": clean / 2, "audit_set": "f" * 64, "audit_set_size": 8,
        "seconds": 1.0, "sanity": [{"name": "monotone", "passed": True, "detail": ""}],
        "points": [{"epsilon": "0", "robust_accuracy": clean}, *({"epsilon": e, "robust_accuracy": clean / 2} for e in EPSILONS)],
    })


def test_report_only_merges_seeds_run_in_other_out_directories(tmp_path):
    from medrobust.reproduce_grid import Cell, GridState

    def run(out, *extra):
        return _reproduce(out, "--report-only", "--report-dir", str(tmp_path / "report"), *extra)

    assert run(tmp_path / "a") == 0  # nothing finished yet: no report, no error
    assert not (tmp_path / "report").exists()
    stored = json.loads((tmp_path / "a" / grid.STATE_FILE).read_text())["config"]  # the command line's settings
    config = grid.GridConfig(**{k: v for k, v in stored.items() if k != "image_size_by_backbone"},
                             backbones=("resnet50",), image_sizes=(32,), seeds=(0, 1))
    state_a, state_b = GridState.open(tmp_path / "a", config), GridState.open(tmp_path / "b", config)
    for attention in (False, True):
        _finished(state_a, Cell("resnet50", attention, 0), 0.5 + 0.2 * attention)
        _finished(state_b, Cell("resnet50", attention, 1), 0.7 + 0.2 * attention)
    assert run(tmp_path / "a", "--merge", str(tmp_path / "b")) == 0
    results = json.loads((tmp_path / "report" / RESULTS_JSON).read_text())
    entry = results["results"][0]["backbones"]["resnet50"]
    assert entry["variants"]["attention"]["seeds"] == [0, 1]
    assert entry["variants"]["baseline"]["clean_accuracy"]["mean"] == pytest.approx(0.6)
    assert entry["attention_gain"]["clean_accuracy"]["values"] == pytest.approx([0.2, 0.2])
    assert (tmp_path / "report" / figure_name("demo", "resnet50")).is_file()
    manifest = json.loads((tmp_path / "report" / MANIFEST).read_text())
    assert manifest["cells"]["resnet50/baseline/seed-1"]["out"] == str(tmp_path / "b")


def test_an_invocation_whose_process_vanished_is_recorded_as_interrupted_not_running(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    assert _reproduce(out, "--report-only") == 0  # stores the settings
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid, boot = int(ended.stdout), grid.boot_id()
    state = json.loads((out / grid.STATE_FILE).read_text())
    state["invocations"] = [
        {"status": "running", "pid": dead_pid, "boot_id": boot},  # killed outright: never wrote its end
        {"status": "running"},  # stored before invocations carried a pid
        {"status": "running", "pid": os.getpid(), "boot_id": "an-earlier-boot"},  # the pid is another process now
        {"status": "running", "pid": os.getpid(), "boot_id": boot},  # alive: left alone
        {"status": "succeeded", "pid": dead_pid, "boot_id": boot},
    ]
    (out / grid.STATE_FILE).write_text(json.dumps(state))
    assert _reproduce(out, "--report-only") == 0
    invocations = json.loads((out / grid.STATE_FILE).read_text())["invocations"]
    assert [i["status"].split(":")[0] for i in invocations] == [
        "interrupted", "interrupted", "interrupted", "running", "succeeded", "succeeded",
    ]
    assert invocations[-1]["pid"] == os.getpid() and invocations[-1]["boot_id"] == boot


def test_the_learning_rate_reaches_every_cells_recipe(tmp_path, monkeypatch):
    recipes = []

    def capture(dataset, variant, **kwargs):
        recipes.append(kwargs["recipe"])
        raise SimulatedCrash("stop before training")

    monkeypatch.setattr(grid, "train_and_export", capture)
    with pytest.raises(SimulatedCrash):
        _reproduce(tmp_path / "out", "--learning-rate", "0.001")
    assert [r.learning_rate for r in recipes] == [0.001]
    stored = json.loads((tmp_path / "out" / grid.STATE_FILE).read_text())["config"]
    assert stored["learning_rate"] == 0.001


def test_a_run_stored_before_the_learning_rate_was_a_setting_used_the_papers(tmp_path):
    config = grid.GridConfig(
        task="demo", dataset="synthetic:90", backbones=("resnet50",), image_sizes=(32,), epochs=1, limit=40,
        seeds=(0,), samples=8, epsilons=("0", "0.01"), steps=2,
    )
    state = grid.GridState.open(tmp_path, config)
    del state.doc["config"]["learning_rate"]
    state.save()
    assert grid.GridState.open(tmp_path, config).doc["config"].get("learning_rate") is None  # reopens: 0.01 matches
    with pytest.raises(grid.StateMismatch, match=r"learning_rate: stored 0.01, given 0.001"):
        grid.GridState.open(tmp_path, grid.GridConfig(**{**config.__dict__, "learning_rate": 0.001}))


def test_a_learning_rate_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["reproduce", "--dataset", "synthetic:90", "--out", str(tmp_path / "out"), "--learning-rate", "0"])
    assert exited.value.code == 2
    assert "expected a number > 0, got 0" in capsys.readouterr().err


def test_attacks_must_be_known_and_l_inf(tmp_path, capsys):
    for attacks, message in (("linf_pgd,bogus", "expected attacks among"), ("l2_pgd", "expected L-inf attacks")):
        with pytest.raises(SystemExit) as exited:
            main(["reproduce", "--dataset", "synthetic:90", "--out", str(tmp_path / "out"), "--attacks", attacks])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def _config(**changes) -> grid.GridConfig:
    return replace(grid.GridConfig(
        task="demo", dataset="synthetic:90", backbones=("resnet50",), image_sizes=(32,), epochs=1, limit=40,
        seeds=(0, 1), samples=8, epsilons=("0", "0.01"), steps=2,
    ), **changes)


def test_a_state_stored_before_attacks_reads_its_audit_as_pgd(tmp_path):
    cell = grid.Cell("resnet50", False, 0)
    state = grid.GridState.open(tmp_path, _config())
    state.record(cell, "train", {"model": "demo-resnet50-baseline", "version": 1})
    state.record(cell, "audit", {"clean_accuracy": 0.5})  # no attack, no budget: as every audit was stored
    with_ensemble = _config(attacks=("linf_pgd", "ensemble"), apgd_steps=2, queries=20)
    reopened = grid.GridState.open(tmp_path, with_ensemble)
    assert reopened.doc["config"] == state.doc["config"], "adding an attack keeps the grid's identity"
    assert grid.cell_audits(reopened.cell(cell)) == {"linf_pgd": {"clean_accuracy": 0.5}}
    assert reopened.done(cell) and not reopened.done(cell, with_ensemble.attacks)
    with pytest.raises(grid.StateMismatch, match=r"steps: stored 2, given 3"):
        grid.GridState.open(tmp_path, _config(steps=3))


def test_merge_takes_a_cell_whole_with_every_attacks_audit(tmp_path):
    config = _config(attacks=("linf_pgd", "ensemble"))
    mine, other = grid.GridState.open(tmp_path / "a", config), grid.GridState.open(tmp_path / "b", config)
    mine.record(grid.Cell("resnet50", False, 0), "audit", {"clean_accuracy": 0.5})
    other.record(grid.Cell("resnet50", False, 0), "audit:ensemble", {"clean_accuracy": 0.9})  # another model
    other.record(grid.Cell("resnet50", False, 1), "audit:ensemble", {"clean_accuracy": 0.7})
    doc = grid.merged(mine, [other])
    assert grid.cell_audits(doc["cells"]["resnet50/baseline/seed-0"]) == {"linf_pgd": {"clean_accuracy": 0.5}}
    assert grid.cell_audits(doc["cells"]["resnet50/baseline/seed-1"]) == {"ensemble": {"clean_accuracy": 0.7}}


# The second attack at tiny budgets on the two finished cells: two audits, no training.
ENSEMBLE = ("--seeds", "0", "--attacks", "linf_pgd,ensemble", "--apgd-steps", "2", "--queries", "20")
ENSEMBLE_BUDGET = {"restarts": 1, "steps": 2, "queries": 20}
OLD_AUDIT = ("model", "version", "clean_accuracy", "balanced_clean_accuracy", "points", "robustness_score", "audit_set",
             "audit_set_size", "sanity", "seconds")
OLD_POINT = ("epsilon", "robust_accuracy", "balanced_robust_accuracy", "noise_robust_accuracy", "attacked", "fooled")


def _as_stored_before_attacks(state: dict) -> dict:
    """The state as `reproduce` wrote it before attacks: PGD's "audit" with no attack, budget or worst class."""
    for cell in state["cells"].values():
        audit = cell["audit"]
        cell["audit"] = {k: audit[k] for k in OLD_AUDIT}
        cell["audit"]["points"] = [{k: p[k] for k in OLD_POINT} for p in audit["points"]]
    return state


@pytest.fixture(scope="module")
def reaudited(resumed, tmp_path_factory):
    """A copy of the finished grid with its state rewritten as before attacks, rerun with the ensemble added."""
    source, *_ = resumed
    out = tmp_path_factory.mktemp("reaudit") / "out"

    def copy(src, dst):  # the exported models are only read: linked, not copied; the rest is rewritten here
        return os.link(src, dst) if "model-repo" in Path(src).parts else shutil.copy2(src, dst)

    shutil.copytree(source, out, copy_function=copy)
    before = _as_stored_before_attacks(json.loads((out / grid.STATE_FILE).read_text()))
    (out / grid.STATE_FILE).write_text(json.dumps(before))
    trained = []

    def no_training(dataset, variant, **kwargs):
        trained.append(variant)
        raise SimulatedCrash("a trained cell was trained again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grid, "train_and_export", no_training)
        assert _reproduce(out, *ENSEMBLE) == 0
    return out, before, json.loads((out / grid.STATE_FILE).read_text()), trained


def test_adding_an_attack_audits_the_finished_cells_with_it_and_trains_nothing(reaudited):
    _, before, after, trained = reaudited
    assert trained == []
    assert after["config"] == before["config"], "an added attack is the same experiment"
    for key in CELLS:
        assert after["cells"][key]["train"] == before["cells"][key]["train"]
        assert after["cells"][key]["audit"] == before["cells"][key]["audit"], "PGD's audit is kept, not rerun"
    assert {key for key, c in after["cells"].items() if "audit:ensemble" in c} == set(CELLS)
    for key in CELLS:
        pgd, ensemble = after["cells"][key]["audit"], after["cells"][key]["audit:ensemble"]
        assert ensemble["attack"] == "ensemble" and ensemble["budget"] == ENSEMBLE_BUDGET
        assert ensemble["audit_set"] == pgd["audit_set"] and ensemble["clean_accuracy"] == pgd["clean_accuracy"]
        assert [p["epsilon"] for p in ensemble["points"]] == ["0", *EPSILONS]
        assert all(p["worst_class_robust_accuracy"] <= p["balanced_robust_accuracy"] + 1e-9 for p in ensemble["points"])
        assert set(ensemble["fooled_by"]) <= {"apgd_ce", "apgd_t", "square"}
        assert {c["name"] for c in ensemble["sanity"]} >= {"black_box_not_stronger", "perturbations_bounded"}


def test_the_report_shows_pgd_and_the_ensemble_side_by_side(reaudited):
    out, *_ = reaudited
    results = json.loads((out / RESULTS_JSON).read_text())
    assert results["attacks"] == ["linf_pgd", "ensemble"]
    pgd, ensemble = results["results"]
    assert (pgd["attack"], pgd["budget"]) == ("linf_pgd", {"restarts": 1, "steps": 2}), "an old audit is PGD's"
    assert (ensemble["attack"], ensemble["budget"]) == ("ensemble", ENSEMBLE_BUDGET)
    assert pgd["backbones"]["resnet50"]["variants"]["baseline"]["seeds"] == [0]
    assert ensemble["backbones"]["resnet50"]["variants"]["baseline"]["seeds"] == [0]
    assert "attention_gain" in ensemble["backbones"]["resnet50"]
    table = (out / RESULTS_MD).read_text()
    assert table.startswith("# demo: attention against baseline under L-inf PGD and AutoAttack's ensemble\n")
    assert "| model | clean | ε=0.01 PGD | ε=0.01 ensemble | ε=0.04 PGD | ε=0.04 ensemble | ε=0.16 PGD |" in table
    assert "- **PGD** (`linf_pgd`; the paper's attack): 2 steps, 1 restart; budget: reduced (2 steps); 2 models." in table
    assert "2 APGD iterations, 20 Square queries, 1 restart; budget: reduced (2 iterations, 20 queries); 2 models." in table
    assert "n/a: PGD audits stored before audits recorded the worst class." in table
    assert (out / figure_name("demo", "resnet50")).stat().st_size > 10_000
    manifest = json.loads((out / MANIFEST).read_text())
    assert list(manifest["cells"][CELLS[0]]["audits"]) == ["linf_pgd", "ensemble"]
    assert manifest["invocations"][-1]["arguments"]["attacks"] == ["linf_pgd", "ensemble"]


def test_report_only_redraws_every_attack_it_finds(reaudited, tmp_path):
    out, *_ = reaudited
    assert _reproduce(out, "--report-only", "--report-dir", str(tmp_path)) == 0  # --attacks left at linf_pgd
    results = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert [r["attack"] for r in results["results"]] == ["linf_pgd", "ensemble"]


def test_an_attack_is_not_resumed_at_another_budget(reaudited, capsys):
    out, *_ = reaudited
    assert _reproduce(out, *ENSEMBLE[:-1], "30") == 2
    assert ("resnet50/attention/seed-0 was audited with ensemble at queries 20, restarts 1, steps 2, given queries 30, "
            "restarts 1, steps 2") in capsys.readouterr().err
