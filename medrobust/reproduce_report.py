"""What `medrobust reproduce` publishes: the paper's figure per backbone, a results table, the manifest.

Everything here is computed from the grid's state file alone, so the report can be redrawn at any
time without a model.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
MANIFEST = "manifest.json"
VARIANTS = ("baseline", "attention")
COLOURS = {"baseline": "tab:blue", "attention": "tab:red"}


def figure_name(task: str, backbone: str) -> str:
    return f"accuracy-{task}-{backbone}.png"


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()) if len(arr) else None,
        # Sample standard deviation over seeds (0 with a single seed: no spread can be measured).
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "n": int(len(arr)),
        "values": [float(v) for v in arr],
    }


def summarise(state_doc: dict[str, Any], class_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """Mean and std over seeds per backbone and variant, and the paired attention gain per seed."""
    config = state_doc["config"]
    cells = [c for c in state_doc["cells"].values() if "audit" in c]
    epsilons = list(config["epsilons"])
    backbones: dict[str, Any] = {}
    for backbone in sorted({c["backbone"] for c in cells}):
        by_variant: dict[str, dict[int, dict]] = {v: {} for v in VARIANTS}
        for c in cells:
            if c["backbone"] == backbone:
                by_variant["attention" if c["attention"] else "baseline"][int(c["seed"])] = c
        entry: dict[str, Any] = {"image_size": config["image_size_by_backbone"].get(backbone), "variants": {}}
        for variant, seeded in by_variant.items():
            if not seeded:
                continue
            seeds = sorted(seeded)
            robust = {eps: [_point(seeded[s], eps)["robust_accuracy"] for s in seeds] for eps in epsilons}
            entry["variants"][variant] = {
                "seeds": seeds,
                "clean_accuracy": _stats([seeded[s]["audit"]["clean_accuracy"] for s in seeds]),
                "balanced_clean_accuracy": _stats([seeded[s]["audit"]["balanced_clean_accuracy"] for s in seeds]),
                "test_accuracy": _stats([seeded[s]["train"]["test_accuracy"] for s in seeds]),
                "robust_accuracy": {eps: _stats(v) for eps, v in robust.items()},
                "robustness_score": _stats([seeded[s]["audit"]["robustness_score"] for s in seeds]),
                "sanity_failures": sorted(
                    {f"seed {s}: {chk['name']}" for s in seeds for chk in seeded[s]["audit"]["sanity"] if not chk["passed"]}
                ),
                "train_seconds": _stats([seeded[s]["train"]["seconds"] for s in seeds]),
                "audit_seconds": _stats([seeded[s]["audit"]["seconds"] for s in seeds]),
            }
        paired = sorted(set(by_variant["baseline"]) & set(by_variant["attention"]))
        if paired:
            att, base = by_variant["attention"], by_variant["baseline"]
            entry["attention_gain"] = {
                "seeds": paired,
                "clean_accuracy": _stats([att[s]["audit"]["clean_accuracy"] - base[s]["audit"]["clean_accuracy"] for s in paired]),
                "robust_accuracy": {
                    eps: _stats([_point(att[s], eps)["robust_accuracy"] - _point(base[s], eps)["robust_accuracy"] for s in paired])
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
    audit_sets = sorted({c["audit"]["audit_set"] for c in cells})
    return {
        "task": config["task"],
        "dataset": config["dataset"],
        "class_names": list(class_names),
        # A model that predicts one class has a balanced accuracy of exactly 1/K: flagged in the table.
        "chance_balanced_accuracy": 1 / len(class_names) if class_names else None,
        "epsilons": epsilons,
        "settings": config,
        "audit_sets": audit_sets,
        "audit_set_size": cells[0]["audit"]["audit_set_size"] if cells else 0,
        "cells_finished": len(cells),
        "backbones": backbones,
    }


def _point(cell: dict[str, Any], epsilon: str) -> dict[str, Any]:
    for p in cell["audit"]["points"]:
        if p["epsilon"] == epsilon:
            return p
    raise KeyError(f"expected epsilon {epsilon} in the audit of {cell['audit']['model']}, got {[p['epsilon'] for p in cell['audit']['points']]}")


def accuracy_figure(summary: dict[str, Any], backbone: str, path: Path) -> Path:
    """The paper's figure: robust accuracy (solid) and clean accuracy (dashed) against a log epsilon axis.

    Means over seeds, with a band of one standard deviation; attention and baseline together.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = summary["backbones"][backbone]
    eps = [e for e in summary["epsilons"] if Decimal(e) > 0]
    x = np.array([float(e) for e in eps])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for variant in VARIANTS:
        stats = entry["variants"].get(variant)
        if stats is None or not len(x):
            continue
        colour = COLOURS[variant]
        n = stats["clean_accuracy"]["n"]
        mean = np.array([stats["robust_accuracy"][e]["mean"] for e in eps])
        std = np.array([stats["robust_accuracy"][e]["std"] for e in eps])
        ax.plot(x, mean, "o-", color=colour, label=f"{variant}: robust (n={n} seeds)")
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        clean, spread = stats["clean_accuracy"]["mean"], stats["clean_accuracy"]["std"]
        ax.plot([x[0], x[-1]], [clean, clean], "--", color=colour, label=f"{variant}: clean {clean:.3f}")
        ax.fill_between([x[0], x[-1]], clean - spread, clean + spread, color=colour, alpha=0.08, linewidth=0)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epsilon (L-inf PGD, pixels in [0, 1])")
    ax.set_ylabel("accuracy on the audit set")
    settings = summary["settings"]
    ax.set_title(
        f"{summary['task']} / {backbone} at {entry['image_size']} px: {settings['steps']}-step PGD, "
        f"{summary['audit_set_size']} images\nmean over seeds, band = 1 std",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(stats: dict[str, Any] | None, signed: bool = False) -> str:
    if stats is None or stats["mean"] is None:
        return "n/a"
    sign = "+" if signed else ""
    if stats["n"] < 2:  # one seed: no spread was measured, so none is shown
        return f"{stats['mean']:{sign}.3f}"
    return f"{stats['mean']:{sign}.3f} ± {stats['std']:.3f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """The results as Markdown: one table per backbone, variants and the attention gain as rows."""
    eps = summary["epsilons"]
    lines = [
        f"# {summary['task']}: attention against baseline under L-inf PGD",
        "",
        f"Dataset `{summary['dataset']}`; {summary['audit_set_size']} audit images, the same for every model "
        f"(audit set {', '.join(a[:12] for a in summary['audit_sets'])}); "
        f"{summary['settings']['steps']} PGD steps. Mean ± sample std over seeds; the gain is attention minus "
        f"baseline, paired by seed. Robust accuracy at epsilon 0 is the clean accuracy on the audit set.",
        "",
    ]
    for backbone, entry in summary["backbones"].items():
        seeds = sorted({s for v in entry["variants"].values() for s in v["seeds"]})
        lines += [f"## {backbone} at {entry['image_size']} px (seeds {', '.join(map(str, seeds))})", ""]
        header = ["model", "clean", *[f"ε={e}" for e in eps if Decimal(e) > 0], "balanced clean", "test acc. (full test split)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant in VARIANTS:
            stats = entry["variants"].get(variant)
            if stats is None:
                continue
            row = [variant, _cell(stats["clean_accuracy"])]
            row += [_cell(stats["robust_accuracy"][e]) for e in eps if Decimal(e) > 0]
            row.append(_cell(stats["balanced_clean_accuracy"]))
            row.append(_cell(stats["test_accuracy"]))
            lines.append("| " + " | ".join(row) + " |")
        gain = entry.get("attention_gain")
        if gain:
            row = ["attention gain", _cell(gain["clean_accuracy"], True)]
            row += [_cell(gain["robust_accuracy"][e], True) for e in eps if Decimal(e) > 0]
            row += ["", ""]
            lines.append("| " + " | ".join(row) + " |")
            ratio = entry["attention_ratio_of_means"]
            row = ["attention / baseline (means)", ""]
            row += ["n/a" if ratio[e] is None else f"{ratio[e]:.2f}x" for e in eps if Decimal(e) > 0]
            row += ["", ""]
            lines.append("| " + " | ".join(row) + " |")
        failures = [f"{v}: {f}" for v, s in entry["variants"].items() for f in s["sanity_failures"]]
        lines += [""]
        chance = summary.get("chance_balanced_accuracy")
        if chance:
            single = [
                f"{variant} seed {seed}"
                for variant, stats in entry["variants"].items()
                for seed, value in zip(stats["seeds"], stats["balanced_clean_accuracy"]["values"])
                if abs(value - chance) < 1e-9
            ]
            if single:
                lines += [
                    f"**Degenerate models** ({', '.join(single)}): a balanced clean accuracy of exactly "
                    f"1/{len(summary['class_names'])} on the audit set, as a model that predicts one class has; "
                    "their robust accuracy says nothing about attention.",
                    "",
                ]
        if failures:
            lines += ["Sanity checks that failed: " + "; ".join(failures) + ".", ""]
        else:
            lines += ["Every audit passed its sanity checks.", ""]
        lines += [f"![{summary['task']} {backbone}]({figure_name(summary['task'], backbone)})", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(state_doc: dict[str, Any], report_dir: Path, *, class_names: tuple[str, ...] = ()) -> list[Path]:
    """The figures, results.md, results.json and manifest.json of the grid; returns the files written."""
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(state_doc, class_names)
    written = []
    for backbone in summary["backbones"]:
        written.append(accuracy_figure(summary, backbone, report_dir / figure_name(summary["task"], backbone)))
    _atomic_write(report_dir / RESULTS_JSON, json.dumps(summary, indent=2) + "\n")
    _atomic_write(report_dir / RESULTS_MD, markdown_table(summary))
    _atomic_write(report_dir / MANIFEST, json.dumps(manifest(state_doc), indent=2) + "\n")
    return written + [report_dir / RESULTS_JSON, report_dir / RESULTS_MD, report_dir / MANIFEST]


def manifest(state_doc: dict[str, Any]) -> dict[str, Any]:
    """How the numbers were made: commands with their wall times, versions, seeds, per-cell timings."""
    cells = {
        key: {
            "model": c.get("train", {}).get("model"),
            "version": c.get("train", {}).get("version"),
            "seed": c["seed"],
            "train_seconds": c.get("train", {}).get("seconds"),
            "train_images_per_second": c.get("train", {}).get("images_per_second"),
            "epochs_trained": c.get("train", {}).get("epochs_trained"),
            "audit_seconds": c.get("audit", {}).get("seconds"),
            "finished": "audit" in c,
            "out": c.get("out"),  # set for cells merged from another --out
        }
        for key, c in sorted(state_doc["cells"].items())
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

    versions = {}
    for package in ("medrobust", "tensorflow", "keras", "numpy", "foolbox", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cwd = source or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
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
