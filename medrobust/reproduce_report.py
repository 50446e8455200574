"""What `medrobust reproduce` publishes: the paper's figure per backbone, a results table, the manifest.

Everything here is computed from the grid's state file alone, so the report can be redrawn at any
time without a model. With several attacks (say PGD and AutoAttack's ensemble) each gets the same
summary, and the table and figure put them side by side: the same models, a weaker and a stronger
attack.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.reproduce_grid import DEFAULT_ATTACK, cell_audits, stored_budget
from training.contract.attacks import ATTACKS, STANDARD, attack_names, attack_spec, budget_label

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
MANIFEST = "manifest.json"
VARIANTS = ("baseline", "attention")
COLOURS = {"baseline": "tab:blue", "attention": "tab:red"}
TITLES = {"linf_pgd": "L-inf PGD", "ensemble": "AutoAttack's ensemble"}
DESCRIPTIONS = {
    "linf_pgd": "the paper's attack",
    "ensemble": "AutoAttack's standard version: APGD-CE, then APGD-T, then FAB-T, then Square on the images still "
                "standing",
}
LINES = {"linf_pgd": ("-", "o"), "ensemble": ("--", "s")}  # (line style, marker); other attacks dash-dot
LINE_NAMES = {"-": "solid", "--": "dashed", "-.": "dash-dot"}


def figure_name(task: str, backbone: str) -> str:
    return f"accuracy-{task}-{backbone}.png"


def label(attack: str) -> str:
    """The attack's short name for table columns and legends (its registry label); the titles name it in full."""
    return attack_spec(attack).label if attack in attack_names() else attack


def _line(attack: str) -> tuple[str, str]:
    return LINES.get(attack, ("-.", "^"))


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()) if len(arr) else None,
        # Sample standard deviation over seeds (0 with a single seed: no spread can be measured).
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "n": int(len(arr)),
        "values": [float(v) for v in arr],
    }


def _attack_order(attack: str) -> tuple[int, int, str]:
    """The paper's attack first, then the audit's own order."""
    names = attack_names()
    return (attack != DEFAULT_ATTACK, names.index(attack) if attack in names else len(names), attack)


def summarise(state_doc: dict[str, Any], class_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """Per attack found in the state: mean and std over seeds per backbone and variant, and the paired
    attention gain per seed. `results` holds one entry per attack, PGD first."""
    config = state_doc["config"]
    cells = [c for c in state_doc["cells"].values() if cell_audits(c)]
    attacks = sorted({a for c in cells for a in cell_audits(c)}, key=_attack_order)
    audits = [a for c in cells for a in cell_audits(c).values()]
    # A model that predicts one class has a balanced accuracy of exactly 1/K: flagged in the table.
    chance = 1 / len(class_names) if class_names else None
    classes = len(class_names)
    return {
        "task": config["task"],
        "dataset": config["dataset"],
        "class_names": list(class_names),
        "chance_balanced_accuracy": chance,
        "epsilons": list(config["epsilons"]),
        "settings": config,
        "attacks": attacks,
        "audit_sets": sorted({a["audit_set"] for a in audits}),
        "audit_set_size": audits[0]["audit_set_size"] if audits else 0,
        "cells_finished": len(cells),
        "results": [_summarise_attack(cells, attack, config, classes) for attack in attacks],
    }


def _summarise_attack(cells: list[dict], attack: str, config: dict[str, Any], classes: int) -> dict[str, Any]:
    """One attack's summary: its budget, and per backbone the statistics of every variant."""
    epsilons = list(config["epsilons"])
    audited = [(c, cell_audits(c)[attack]) for c in cells if attack in cell_audits(c)]
    budgets = {json.dumps(stored_budget(a, attack, config), sort_keys=True) for _, a in audited}
    backbones: dict[str, Any] = {}
    for backbone in sorted({c["backbone"] for c, _ in audited}):
        by_variant: dict[str, dict[int, tuple[dict, dict]]] = {v: {} for v in VARIANTS}
        for c, a in audited:
            if c["backbone"] == backbone:
                by_variant["attention" if c["attention"] else "baseline"][int(c["seed"])] = (c, a)
        entry: dict[str, Any] = {"image_size": config["image_size_by_backbone"].get(backbone), "variants": {}}
        for variant, seeded in by_variant.items():
            if seeded:
                entry["variants"][variant] = _variant_stats(seeded, epsilons, classes)
        paired = sorted(set(by_variant["baseline"]) & set(by_variant["attention"]))
        if paired:
            att, base = by_variant["attention"], by_variant["baseline"]
            entry["attention_gain"] = {
                "seeds": paired,
                "clean_accuracy": _stats([att[s][1]["clean_accuracy"] - base[s][1]["clean_accuracy"] for s in paired]),
                "robust_accuracy": {
                    eps: _stats([_point(att[s][1], eps)["robust_accuracy"] - _point(base[s][1], eps)["robust_accuracy"]
                                 for s in paired])
                    for eps in epsilons
                },
            }
            means = entry["variants"]
            entry["attention_ratio_of_means"] = {
                eps: (
                    means["attention"]["robust_accuracy"][eps]["mean"] / means["baseline"]["robust_accuracy"][eps]["mean"]
                    if means["baseline"]["robust_accuracy"][eps]["mean"]
                    else None
                )
                for eps in epsilons
            }
        backbones[backbone] = entry
    return {
        "attack": attack,
        # What the attack spent per image and epsilon; None (and `budgets` lists them) if models differ.
        "budget": json.loads(next(iter(budgets))) if len(budgets) == 1 else None,
        "budgets": [json.loads(b) for b in sorted(budgets)],
        "audit_sets": sorted({a["audit_set"] for _, a in audited}),
        "cells_finished": len(audited),
        "backbones": backbones,
    }


def _variant_stats(seeded: dict[int, tuple[dict, dict]], epsilons: list[str], classes: int) -> dict[str, Any]:
    seeds = sorted(seeded)
    audit = {s: seeded[s][1] for s in seeds}
    train = {s: seeded[s][0].get("train", {}) for s in seeds}
    worst = {eps: [_point(audit[s], eps).get("worst_class_robust_accuracy") for s in seeds] for eps in epsilons}
    fooled_by: dict[str, int] = {}
    for s in seeds:
        for name, count in audit[s].get("fooled_by", {}).items():
            fooled_by[name] = fooled_by.get(name, 0) + int(count)
    return {
        "seeds": seeds,
        "clean_accuracy": _stats([audit[s]["clean_accuracy"] for s in seeds]),
        "balanced_clean_accuracy": _stats([audit[s]["balanced_clean_accuracy"] for s in seeds]),
        "test_accuracy": _stats([train[s]["test_accuracy"] for s in seeds]),
        "robust_accuracy": {eps: _stats([_point(audit[s], eps)["robust_accuracy"] for s in seeds]) for eps in epsilons},
        # The lowest per-class recall under attack, over the seeds whose audit recorded it.
        "worst_class_robust_accuracy": {eps: _stats([v for v in values if v is not None]) for eps, values in worst.items()},
        # Each seed's Wilson 95% interval of its robust accuracy over the audit set (None if not recorded).
        "robust_accuracy_interval": {
            eps: [
                [p["robust_accuracy_lower"], p["robust_accuracy_upper"]] if "robust_accuracy_lower" in p else None
                for p in (_point(audit[s], eps) for s in seeds)
            ]
            for eps in epsilons
        },
        "robustness_score": _stats([audit[s]["robustness_score"] for s in seeds]),
        "degenerate": [d for d in (_degenerate(s, audit[s], classes) for s in seeds) if d],
        "fooled_by": dict(sorted(fooled_by.items())),
        "sanity_failures": sorted(
            {f"seed {s}: {chk['name']}" for s in seeds for chk in audit[s]["sanity"] if not chk["passed"]}
        ),
        "train_seconds": _stats([train[s]["seconds"] for s in seeds]),
        "audit_seconds": _stats([audit[s]["seconds"] for s in seeds]),
    }


def _degenerate(seed: int, audit: dict[str, Any], classes: int) -> dict[str, Any] | None:
    """Why one model's robust accuracy says nothing about robustness, or None if nothing does.

    The audit's own flag (clean answers nearly all one class: each true class weighted equally since
    the class-balanced rule, by image before); audits stored before it had one are flagged by a
    balanced clean accuracy of exactly 1/K, as a one-class predictor has.
    """
    share = audit.get("predicted_class_max_share")
    balanced = audit.get("balanced_predicted_class_max_share")
    if audit.get("degenerate") and balanced is not None:
        reason = f"{balanced:.0%} of its clean answers are one class, each true class weighted equally"
    elif audit.get("degenerate"):
        reason = f"{share:.0%} of its clean answers are one class"
    elif classes and abs(audit["balanced_clean_accuracy"] - 1 / classes) < 1e-9:
        reason = f"a balanced clean accuracy of exactly 1/{classes} on the audit set"
    else:
        return None
    return {"seed": seed, "predicted_class_max_share": share, "reason": reason}


def _point(audit: dict[str, Any], epsilon: str) -> dict[str, Any]:
    for p in audit["points"]:
        if p["epsilon"] == epsilon:
            return p
    raise KeyError(f"expected epsilon {epsilon} in the audit of {audit['model']}, got {[p['epsilon'] for p in audit['points']]}")


def budget_text(attack: str, budget: dict[str, Any] | None) -> str:
    """An attack's budget in words: '20 steps, 1 restart' or '100 APGD iterations, 5000 Square queries, 1 restart'."""
    if budget is None:
        return "budgets differ between models"
    parts = []
    if "steps" in budget:
        parts.append(f"{budget['steps']} {'steps' if attack == DEFAULT_ATTACK else 'APGD iterations'}")
    if "queries" in budget:
        parts.append(f"{budget['queries']} Square queries")
    if "restarts" in budget:
        parts.append(f"{budget['restarts']} restart{'s' if budget['restarts'] != 1 else ''}")
    return (", ".join(parts) or "no iterations") + f"; budget: {_budget_label(attack, budget)}"


def _budget_label(attack: str, budget: dict[str, Any]) -> str:
    """"standard" or "reduced (...)": never "standard" for a budget below the attack's defaults."""
    return budget_label(attack, budget) if attack in ATTACKS else "unknown"


def _short_budget(attack: str, budget: dict[str, Any] | None) -> str:
    """The budget for a figure's title: '20-step PGD', 'ensemble (100 it., 5000 queries)'."""
    if budget is None:
        return f"{label(attack)} (mixed budgets)"
    if attack == DEFAULT_ATTACK and "steps" in budget:
        return f"{budget['steps']}-step {label(attack)}"
    detail = []
    if "steps" in budget:
        detail.append(f"{budget['steps']} it.")
    if "queries" in budget:
        detail.append(f"{budget['queries']} queries")
    if detail and _budget_label(attack, budget) != STANDARD:
        detail.append(_budget_label(attack, budget).split(" (")[0])
    return f"{label(attack)} ({', '.join(detail)})" if detail else label(attack)


def reproduction_figure(summary: dict[str, Any], backbone: str, path: Path) -> Path:
    """The paper's figure: robust accuracy against a log epsilon axis, one line style per attack (PGD
    solid, the ensemble dashed), clean accuracy dotted.

    Means over seeds, with a band of one standard deviation; attention and baseline together.
    """
    import matplotlib.pyplot as plt

    fig = draw_reproduction_figure(summary, backbone)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_reproduction_figure(summary: dict[str, Any], backbone: str):
    """`reproduction_figure`'s matplotlib figure, not yet saved (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in summary["results"] if backbone in r["backbones"]]
    eps = [e for e in summary["epsilons"] if Decimal(e) > 0]
    x = np.array([float(e) for e in eps])
    fig, ax = plt.subplots(figsize=(6.4, 4.4 + 0.35 * max(0, len(results) - 1)), dpi=110)
    for variant in VARIANTS:
        colour = COLOURS[variant]
        clean_drawn = False
        for number, result in enumerate(results):
            stats = result["backbones"][backbone]["variants"].get(variant)
            if stats is None or not len(x):
                continue
            if not clean_drawn:  # the same models on the same images: one clean line, from the first attack
                clean, spread = stats["clean_accuracy"]["mean"], stats["clean_accuracy"]["std"]
                ax.plot([x[0], x[-1]], [clean, clean], ":", color=colour, label=f"{variant}: clean {clean:.3f}")
                ax.fill_between([x[0], x[-1]], clean - spread, clean + spread, color=colour, alpha=0.08, linewidth=0)
                clean_drawn = True
            style, marker = _line(result["attack"])
            n = stats["clean_accuracy"]["n"]
            mean = np.array([stats["robust_accuracy"][e]["mean"] for e in eps])
            std = np.array([stats["robust_accuracy"][e]["std"] for e in eps])
            name = f"{label(result['attack'])} robust" if len(results) > 1 else "robust"
            ax.plot(x, mean, linestyle=style, marker=marker, color=colour,
                    label=f"{variant}: {name} (n={n} seed{'s' if n != 1 else ''})")
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15 if number == 0 else 0.08, linewidth=0)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epsilon (L-inf, pixels in [0, 1])")
    ax.set_ylabel("accuracy on the audit set")
    size = results[0]["backbones"][backbone]["image_size"] if results else None
    attacks = ", ".join(
        _short_budget(r["attack"], r["budget"]) + (f" {LINE_NAMES[_line(r['attack'])[0]]}" if len(results) > 1 else "")
        for r in results
    )
    ax.set_title(
        # The attacks on a line of their own: with two budgets the one-line title ran off the figure.
        f"{summary['task']} / {backbone} at {size} px, {summary['audit_set_size']} images\n{attacks}\n"
        "mean over seeds, band = 1 std",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    if len(results) > 1:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def _cell(stats: dict[str, Any] | None, signed: bool = False) -> str:
    if stats is None or stats["mean"] is None:
        return "n/a"
    sign = "+" if signed else ""
    if stats["n"] < 2:  # one seed: no spread was measured, so none is shown
        return f"{stats['mean']:{sign}.3f}"
    return f"{stats['mean']:{sign}.3f} ± {stats['std']:.3f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(summary: dict[str, Any]) -> str:
    """The results as Markdown: one table per backbone, variants and the attention gain as rows, and
    with several attacks one column per attack at each epsilon, side by side."""
    eps = [e for e in summary["epsilons"] if Decimal(e) > 0]
    results = summary["results"]
    several = len(results) > 1
    head = (lambda e, a: f"ε={e} {label(a)}") if several else (lambda e, a: f"ε={e}")
    titles = " and ".join(TITLES.get(r["attack"], label(r["attack"])) for r in results)
    lines = [
        f"# {summary['task']}: attention against baseline under {titles}",
        "",
        f"Dataset `{summary['dataset']}`; {summary['audit_set_size']} audit images, the same for every model"
        f"{' and attack' if several else ''} (audit set {', '.join(a[:12] for a in summary['audit_sets'])}). "
        "Mean ± sample std over seeds; the gain is attention minus baseline, paired by seed. Robust accuracy at "
        "epsilon 0 is the clean accuracy on the audit set.",
        "",
        f"Attack budget{'s' if several else ''} (per image and epsilon, on {summary['audit_set_size']} images):",
        "",
    ]
    for r in results:
        what = "; ".join(filter(None, [f"`{r['attack']}`", DESCRIPTIONS.get(r["attack"])]))
        line = f"- **{label(r['attack'])}** ({what}): {budget_text(r['attack'], r['budget'])}; {r['cells_finished']} models."
        if r["budget"] is None:
            line += " Budgets per model: " + "; ".join(budget_text(r["attack"], b) for b in r["budgets"]) + "."
        lines.append(line)
    lines.append("")
    if several:
        lines += [
            f"The columns marked {' and '.join(label(r['attack']) for r in results)} are the same models under each "
            "attack; the figures draw " + ", ".join(f"{label(r['attack'])} {LINE_NAMES[_line(r['attack'])[0]]}" for r in results)
            + " and clean accuracy dotted.",
            "",
        ]
    for backbone in sorted({b for r in results for b in r["backbones"]}):
        entries = [(r["attack"], r["backbones"][backbone]) for r in results if backbone in r["backbones"]]
        lines += _backbone_section(summary, backbone, entries, eps, head, several)
    return "\n".join(lines)


def _backbone_section(summary, backbone: str, entries: list[tuple[str, dict]], eps: list[str], head, several: bool) -> list[str]:
    seeds_by_attack = {a: sorted({s for v in e["variants"].values() for s in v["seeds"]}) for a, e in entries}
    seeds = sorted({s for v in seeds_by_attack.values() for s in v})
    lines = [f"## {backbone} at {entries[0][1]['image_size']} px (seeds {', '.join(map(str, seeds))})", ""]
    if len({tuple(v) for v in seeds_by_attack.values()}) > 1:
        lines += [
            "Not every attack has audited every seed yet ("
            + "; ".join(f"{label(a)}: seeds {', '.join(map(str, s))}" for a, s in seeds_by_attack.items())
            + "): each column is over its own attack's seeds.",
            "",
        ]

    def first(variant: str) -> dict | None:  # clean figures: the same models and images under every attack
        return next((e["variants"][variant] for _, e in entries if variant in e["variants"]), None)

    header = ["model", "clean", *[head(e, a) for e in eps for a, _ in entries], "balanced clean", "test acc. (full test split)"]
    lines += [_row(header), "|" + "---|" * len(header)]
    for variant in VARIANTS:
        stats = first(variant)
        if stats is None:
            continue
        row = [variant, _cell(stats["clean_accuracy"])]
        row += [_cell(e["variants"][variant]["robust_accuracy"][p]) if variant in e["variants"] else "n/a"
                for p in eps for _, e in entries]
        row += [_cell(stats["balanced_clean_accuracy"]), _cell(stats["test_accuracy"])]
        lines.append(_row(row))
    gains = [(a, e.get("attention_gain"), e.get("attention_ratio_of_means")) for a, e in entries]
    if any(g for _, g, _ in gains):
        clean_gain = next(g for _, g, _ in gains if g)["clean_accuracy"]
        row = ["attention gain", _cell(clean_gain, True)]
        row += [_cell(g["robust_accuracy"][p], True) if g else "n/a" for p in eps for _, g, _ in gains]
        lines.append(_row(row + ["", ""]))
        row = ["attention / baseline (means)", ""]
        row += ["n/a" if not ratio or ratio[p] is None else f"{ratio[p]:.2f}x" for p in eps for _, _, ratio in gains]
        lines.append(_row(row + ["", ""]))
    lines.append("")
    lines += _worst_class_table(entries, eps, head)
    lines += _degenerate_note(entries)
    for attack, entry in entries:
        if attack == "ensemble":
            totals: dict[str, int] = {}
            for stats in entry["variants"].values():
                for name, count in stats.get("fooled_by", {}).items():
                    totals[name] = totals.get(name, 0) + count
            if totals:
                lines += [
                    "Images each stage of the ensemble fooled (each image once, at the smallest epsilon that fooled it), "
                    "summed over its models: "
                    + ", ".join(f"{name} {count}" for name, count in totals.items()) + ".",
                    "",
                ]
    failures = [
        f"{label(a) + ' ' if several else ''}{variant}: {failure}"
        for a, e in entries for variant, stats in e["variants"].items() for failure in stats["sanity_failures"]
    ]
    lines += ["Sanity checks that failed: " + "; ".join(failures) + ".", ""] if failures else ["Every audit passed its sanity checks.", ""]
    lines += [f"![{summary['task']} {backbone}]({figure_name(summary['task'], backbone)})", ""]
    return lines


def _worst_class_table(entries: list[tuple[str, dict]], eps: list[str], head) -> list[str]:
    """The lowest per-class robust accuracy: a model can hold its mean by holding one class."""
    recorded = any(
        s["worst_class_robust_accuracy"][p]["mean"] is not None
        for _, e in entries for s in e["variants"].values() for p in eps
    )
    if not recorded:
        return []
    header = ["model", "clean", *[head(e, a) for e in eps for a, _ in entries]]
    lines = [
        "Worst-class robust accuracy (the lowest per-class recall under attack; a model can keep its mean by "
        "holding on to one class):",
        "",
        _row(header),
        "|" + "---|" * len(header),
    ]
    for variant in VARIANTS:
        per_attack = [e["variants"].get(variant) for _, e in entries]
        if not any(per_attack):
            continue
        clean = next((s["worst_class_robust_accuracy"]["0"] for s in per_attack
                      if s and s["worst_class_robust_accuracy"].get("0", {}).get("mean") is not None), None)
        row = [variant, _cell(clean)]
        row += [_cell(s["worst_class_robust_accuracy"][p]) if s else "n/a" for p in eps for s in per_attack]
        lines.append(_row(row))
    unrecorded = [
        label(a) for a, e in entries
        if all(s["worst_class_robust_accuracy"][p]["mean"] is None for s in e["variants"].values() for p in eps)
    ]
    if unrecorded:
        lines += ["", f"n/a: {' and '.join(unrecorded)} audits stored before audits recorded the worst class."]
    return lines + [""]


def _degenerate_note(entries: list[tuple[str, dict]]) -> list[str]:
    """Models whose clean answers are (almost) one class: the same models under every attack, named once."""
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for _, entry in entries:
        for number, variant in enumerate(VARIANTS):
            for d in entry["variants"].get(variant, {}).get("degenerate", []):
                known = found.get((number, d["seed"]))
                if known is None or (known["predicted_class_max_share"] is None and d["predicted_class_max_share"] is not None):
                    found[(number, d["seed"])] = {**d, "variant": variant}  # an audit's own flag says more than 1/K
    if not found:
        return []
    return [
        "**Degenerate models**, whose robust accuracy is their favourite class's share and says nothing about "
        "attention: " + "; ".join(f"{d['variant']} seed {d['seed']}: {d['reason']}" for _, d in sorted(found.items())) + ".",
        "",
    ]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(state_doc: dict[str, Any], report_dir: Path, *, class_names: tuple[str, ...] = ()) -> list[Path]:
    """The figures, results.md, results.json and manifest.json of the grid; returns the files written."""
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(state_doc, class_names)
    written = []
    for backbone in sorted({b for r in summary["results"] for b in r["backbones"]}):
        written.append(reproduction_figure(summary, backbone, report_dir / figure_name(summary["task"], backbone)))
    _atomic_write(report_dir / RESULTS_JSON, json.dumps(summary, indent=2) + "\n")
    _atomic_write(report_dir / RESULTS_MD, markdown_table(summary))
    _atomic_write(report_dir / MANIFEST, json.dumps(manifest(state_doc), indent=2) + "\n")
    return written + [report_dir / RESULTS_JSON, report_dir / RESULTS_MD, report_dir / MANIFEST]


def manifest(state_doc: dict[str, Any]) -> dict[str, Any]:
    """How the numbers were made: commands with their wall times, versions, seeds, per-cell timings."""
    cells = {}
    for key, c in sorted(state_doc["cells"].items()):
        audits = dict(sorted(cell_audits(c).items(), key=lambda kv: _attack_order(kv[0])))
        cells[key] = {
            "model": c.get("train", {}).get("model"),
            "version": c.get("train", {}).get("version"),
            "seed": c["seed"],
            "train_seconds": c.get("train", {}).get("seconds"),
            "train_images_per_second": c.get("train", {}).get("images_per_second"),
            "epochs_trained": c.get("train", {}).get("epochs_trained"),
            "audit_seconds": round(sum(a["seconds"] for a in audits.values()), 1) if audits else None,  # every attack's
            "audits": {
                attack: {"seconds": a["seconds"], "budget": stored_budget(a, attack, state_doc["config"])}
                for attack, a in audits.items()
            },
            "finished": bool(audits),
            "out": c.get("out"),  # set for cells merged from another --out
        }
    return {
        "settings": state_doc["config"],
        "seeds": sorted({c["seed"] for c in state_doc["cells"].values()}),
        "invocations": state_doc.get("invocations", []),
        "cells": cells,
    }


def environment(source: Path | None = None) -> dict[str, Any]:
    """Package versions, the machine and the source revision, recorded with each invocation.

    `git_dirty` lists tracked files that differ from `git_commit`: a run made from an edited
    checkout must not pass for one made from the commit it names.
    """
    import platform
    import subprocess
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for package in ("medrobust", "tensorflow", "keras", "numpy", "foolbox", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cwd = source or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    dirty = sorted(line[3:] for line in status.splitlines() if line.strip()) if status is not None else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "git_commit": commit,
        "git_dirty": dirty,
    }
