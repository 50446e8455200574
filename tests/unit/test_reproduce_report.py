"""The reproduction's report from hand-made state documents: PGD and the ensemble side by side, no training."""

from __future__ import annotations

import json

import pytest

from medrobust.reproduce_report import (
    MANIFEST,
    RESULTS_JSON,
    RESULTS_MD,
    draw_reproduction_figure,
    figure_name,
    manifest,
    markdown_table,
    summarise,
    write_report,
)

EPSILONS = ["0", "0.01", "0.04"]
ENSEMBLE_BUDGET = {"restarts": 1, "steps": 2, "queries": 20}
CLASSES = ("normal", "pneumonia")


def _points(clean: float, robust: list[float], worst: list[float] | None = None) -> list[dict]:
    """Audit points as the grid stores them; without `worst`, as a PGD audit stored before there were attacks."""
    points = []
    for i, (eps, value) in enumerate(zip(EPSILONS, [clean, *robust])):
        point = {"epsilon": eps, "robust_accuracy": value, "balanced_robust_accuracy": value, "attacked": 8, "fooled": 1}
        if worst is not None:
            point.update(worst_class_robust_accuracy=worst[i], robust_accuracy_lower=max(0.0, value - 0.2),
                         robust_accuracy_upper=min(1.0, value + 0.2), per_class={"normal": worst[i], "pneumonia": value})
        points.append(point)
    return points


def _audit(model: str, clean: float, robust: list[float], **extra) -> dict:
    return {
        "model": model, "version": 1, "clean_accuracy": clean, "balanced_clean_accuracy": extra.pop("balanced", clean),
        "robustness_score": sum(robust) / len(robust), "audit_set": "a" * 64, "audit_set_size": 8, "seconds": 2.0,
        "sanity": [{"name": "perturbations_bounded", "passed": True, "detail": ""}],
        "points": _points(clean, robust, extra.pop("worst", None)), **extra,
    }


def _cell(variant: str, seed: int, clean: float, pgd: list[float] | None, ensemble: list[float] | None, **flags) -> dict:
    model = f"demo-resnet50-{variant}"
    cell = {
        "backbone": "resnet50", "attention": variant == "attention", "seed": seed,
        "train": {"model": model, "version": seed + 1, "seconds": 10.0, "images_per_second": 4.0, "epochs_trained": 1,
                  "test_accuracy": clean},
    }
    if pgd is not None:  # as every state file stored it before attacks: no attack, budget or worst class
        cell["audit"] = _audit(model, clean, pgd, balanced=flags.get("balanced", clean))
    if ensemble is not None:
        cell["audit:ensemble"] = _audit(
            model, clean, ensemble, attack="ensemble", budget=dict(ENSEMBLE_BUDGET), seed=0,
            worst=[clean / 2, *(v / 2 for v in ensemble)], predicted_class_max_share=flags.get("share", 0.6),
            degenerate=flags.get("share", 0.6) >= 0.95, fooled_by={"apgd_ce": 3, "apgd_t": 1},
            balanced=flags.get("balanced", clean),
        )
    return cell


def _state(*cells: dict) -> dict:
    return {
        "format": 1,
        "config": {"task": "demo", "dataset": "synthetic:90", "epochs": 1, "limit": 40, "samples": 8, "epsilons": EPSILONS,
                   "steps": 2, "split_seed": 0, "audit_seed": 0, "image_size_by_backbone": {"resnet50": 32}},
        "cells": {f"{c['backbone']}/{'attention' if c['attention'] else 'baseline'}/seed-{c['seed']}": c for c in cells},
        "invocations": [],
    }


@pytest.fixture
def both():
    """Two seeds of baseline and attention, each audited with PGD (old records) and the ensemble."""
    return _state(
        _cell("baseline", 0, 0.75, [0.50, 0.25], [0.375, 0.125]),
        _cell("baseline", 1, 0.625, [0.375, 0.125], [0.25, 0.0]),
        _cell("attention", 0, 0.75, [0.625, 0.5], [0.5, 0.25], share=0.97),
        _cell("attention", 1, 0.875, [0.75, 0.5], [0.625, 0.375]),
    )


def _row(table: str, first: str) -> list[str]:
    """The cells of the table row that starts with `first`, without the first."""
    line = next(line for line in table.splitlines() if line.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_the_summary_has_one_entry_per_attack_pgd_first(both):
    summary = summarise(both, CLASSES)
    assert summary["attacks"] == ["linf_pgd", "ensemble"]
    pgd, ensemble = summary["results"]
    assert (pgd["attack"], ensemble["attack"]) == ("linf_pgd", "ensemble")
    assert pgd["budget"] == {"restarts": 1, "steps": 2}, "an old record's budget is the grid's PGD steps"
    assert ensemble["budget"] == ENSEMBLE_BUDGET
    base = pgd["backbones"]["resnet50"]["variants"]["baseline"]
    assert base["robust_accuracy"]["0.01"]["values"] == [0.5, 0.375]
    assert base["worst_class_robust_accuracy"]["0.01"]["n"] == 0, "old PGD records have no worst class"
    strong = ensemble["backbones"]["resnet50"]
    assert strong["variants"]["baseline"]["robust_accuracy"]["0.04"]["mean"] == pytest.approx(0.0625)
    assert strong["variants"]["baseline"]["worst_class_robust_accuracy"]["0.01"]["values"] == [0.1875, 0.125]
    assert strong["variants"]["baseline"]["robust_accuracy_interval"]["0.01"][0] == pytest.approx([0.175, 0.575])
    assert strong["attention_gain"]["robust_accuracy"]["0.04"]["values"] == pytest.approx([0.125, 0.375])
    assert strong["variants"]["attention"]["degenerate"] == [
        {"seed": 0, "predicted_class_max_share": 0.97, "reason": "97% of its clean answers are one class"}
    ]
    assert strong["variants"]["baseline"]["fooled_by"] == {"apgd_ce": 6, "apgd_t": 2}


def test_the_table_puts_each_epsilons_pgd_and_ensemble_columns_side_by_side(both):
    table = markdown_table(summarise(both, CLASSES))
    assert "| model | clean | ε=0.01 PGD | ε=0.01 ensemble | ε=0.04 PGD | ε=0.04 ensemble | balanced clean |" in table
    assert _row(table, "baseline")[:5] == ["0.688 ± 0.088", "0.438 ± 0.088", "0.312 ± 0.088", "0.188 ± 0.088", "0.062 ± 0.088"]
    assert _row(table, "attention gain")[3:5] == ["+0.312 ± 0.088", "+0.250 ± 0.177"]
    assert _row(table, "attention / baseline (means)")[1:5] == ["1.57x", "1.80x", "2.67x", "5.00x"]


def test_the_table_states_each_attacks_budget_beside_the_results(both):
    table = markdown_table(summarise(both, CLASSES))
    assert table.startswith("# demo: attention against baseline under L-inf PGD and AutoAttack's ensemble\n")
    assert "Attack budgets (per image and epsilon, on 8 images):" in table
    assert "- **PGD** (`linf_pgd`; the paper's attack): 2 steps, 1 restart; budget: reduced (2 steps); 4 models." in table
    assert ("- **ensemble** (`ensemble`; AutoAttack's standard version: APGD-CE, then APGD-T, then FAB-T, then Square on "
            "the images still standing): 2 APGD iterations, 20 Square queries, 1 restart; budget: reduced (2 iterations, "
            "20 queries); 4 models.") in table
    assert "standard" not in table.split("Attack budgets", 1)[1].split("\n\n", 1)[0].replace("standard version", "")
    assert "the figures draw PGD solid, ensemble dashed and clean accuracy dotted" in table
    assert "smallest epsilon that fooled it), summed over its models: apgd_ce 12, apgd_t 4." in table


def test_the_worst_class_table_shows_what_each_attack_recorded(both):
    table = markdown_table(summarise(both, CLASSES))
    worst = table.split("Worst-class robust accuracy", 1)[1]
    assert _row(worst, "baseline") == ["0.344 ± 0.044", "n/a", "0.156 ± 0.044", "n/a", "0.031 ± 0.044"]
    assert "n/a: PGD audits stored before audits recorded the worst class." in worst


def test_degenerate_models_are_flagged_once_whichever_attack_recorded_them(both):
    both["cells"]["resnet50/baseline/seed-1"]["audit"]["balanced_clean_accuracy"] = 0.5  # an old one-class record
    both["cells"]["resnet50/attention/seed-0"]["audit"]["balanced_clean_accuracy"] = 0.5  # the ensemble's flag says more
    table = markdown_table(summarise(both, CLASSES))
    assert ("**Degenerate models**, whose robust accuracy is their favourite class's share and says nothing about "
            "attention: baseline seed 1: a balanced clean accuracy of exactly 1/2 on the audit set; attention seed 0: "
            "97% of its clean answers are one class.") in table


def test_a_state_with_only_pgd_audits_reads_as_before(both):
    for cell in both["cells"].values():
        del cell["audit:ensemble"]
    summary = summarise(both, CLASSES)
    assert [r["attack"] for r in summary["results"]] == ["linf_pgd"]
    table = markdown_table(summary)
    assert table.startswith("# demo: attention against baseline under L-inf PGD\n")
    assert "| model | clean | ε=0.01 | ε=0.04 | balanced clean | test acc. (full test split) |" in table
    assert "Worst-class" not in table and "Degenerate" not in table
    assert "- **PGD** (`linf_pgd`; the paper's attack): 2 steps, 1 restart; budget: reduced (2 steps); 4 models." in table


def test_seeds_missing_for_one_attack_are_said_and_left_out_of_its_columns(both):
    del both["cells"]["resnet50/baseline/seed-1"]["audit:ensemble"]
    del both["cells"]["resnet50/attention/seed-1"]["audit:ensemble"]
    summary = summarise(both, CLASSES)
    assert summary["results"][1]["backbones"]["resnet50"]["variants"]["baseline"]["seeds"] == [0]
    table = markdown_table(summary)
    assert "Not every attack has audited every seed yet (PGD: seeds 0, 1; ensemble: seeds 0)" in table
    assert _row(table, "baseline")[:3] == ["0.688 ± 0.088", "0.438 ± 0.088", "0.375"]


def test_an_attack_audited_at_two_budgets_says_so(both):
    both["cells"]["resnet50/attention/seed-1"]["audit:ensemble"]["budget"]["queries"] = 5000
    ensemble = summarise(both, CLASSES)["results"][1]
    assert ensemble["budget"] is None and len(ensemble["budgets"]) == 2
    table = markdown_table(summarise(both, CLASSES))
    assert ("budgets differ between models; 4 models. Budgets per model: "
            "2 APGD iterations, 20 Square queries, 1 restart; budget: reduced (2 iterations, 20 queries); "
            "2 APGD iterations, 5000 Square queries, 1 restart; budget: reduced (2 iterations, 5000 queries).") in table


def test_write_report_tags_every_results_entry_with_its_attack(both, tmp_path):
    written = write_report(both, tmp_path, class_names=CLASSES)
    figure = tmp_path / figure_name("demo", "resnet50")
    assert figure in written and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert [(r["attack"], r["cells_finished"]) for r in results["results"]] == [("linf_pgd", 4), ("ensemble", 4)]
    assert "ε=0.04 ensemble" in (tmp_path / RESULTS_MD).read_text()
    cells = json.loads((tmp_path / MANIFEST).read_text())["cells"]
    assert cells["resnet50/baseline/seed-0"]["audits"] == {
        "linf_pgd": {"seconds": 2.0, "budget": {"restarts": 1, "steps": 2}},
        "ensemble": {"seconds": 2.0, "budget": ENSEMBLE_BUDGET},
    }


def test_the_manifest_sums_a_cells_audits_and_marks_unaudited_cells_unfinished(both):
    both["cells"]["resnet50/attention/seed-1"] = _cell("attention", 1, 0.8, None, None)
    cells = manifest(both)["cells"]
    finished, unaudited = cells["resnet50/baseline/seed-0"], cells["resnet50/attention/seed-1"]
    assert (finished["audit_seconds"], finished["finished"]) == (4.0, True)
    assert (unaudited["audit_seconds"], unaudited["audits"], unaudited["finished"]) == (None, {}, False)


def test_the_figures_title_fits_with_both_attacks_at_real_budgets(both):
    import matplotlib.pyplot as plt

    for cell in both["cells"].values():  # the budgets of docs/results: their labels are the longest drawn
        cell["audit"]["budget"] = {"restarts": 1, "steps": 10}
        cell["audit:ensemble"]["budget"] = {"restarts": 1, "steps": 25, "queries": 300}
    fig = draw_reproduction_figure(summarise(both, CLASSES), "resnet50")
    try:
        fig.canvas.draw()
        title = fig.axes[0].title
        assert "10-step PGD solid, ensemble (25 it., 300 queries, reduced) dashed" in title.get_text()
        box = title.get_window_extent(fig.canvas.get_renderer())
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width, f"the title runs off the figure: {box} in {fig.bbox}"
    finally:
        plt.close(fig)


def test_a_class_balanced_degenerate_flag_gives_the_share_it_was_judged_on():
    from medrobust.reproduce_report import _degenerate

    # Pneumonia's proportional audit set: "pneumonia" for 45 of 48 images, 3 of 18 normal ones right.
    audit = {"degenerate": True, "predicted_class_max_share": 45 / 48, "balanced_predicted_class_max_share": (15 / 18 + 1) / 2,
             "balanced_clean_accuracy": (3 / 18 + 1) / 2}
    assert _degenerate(3, audit, 2) == {
        "seed": 3, "predicted_class_max_share": 45 / 48,
        "reason": "92% of its clean answers are one class, each true class weighted equally",
    }
