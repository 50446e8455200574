"""Per-run reports: the paper's accuracy-against-epsilon figure, example perturbations, Grad-CAM.

Drawn from the store and the run's saved examples alone (no model server needed), as PNG files
and one HTML page beside them.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from audit.store import AuditStore, RunRecord

FIGURE = "accuracy.png"
EXAMPLES = "examples.png"
PAGE = "index.html"


def _label(run: RunRecord) -> str:
    return f"{'attention' if run.attention else 'baseline'} ({run.model} v{run.version})"


def accuracy_figure(runs: list[RunRecord], path: Path) -> Path:
    """Clean (dashed) and robust accuracy against epsilon on a log axis, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for run, colour in zip(runs, ("tab:red", "tab:blue", "tab:green", "tab:orange")):
        pts = [p for p in run.points if p["epsilon_value"] > 0]
        eps = [p["epsilon_value"] for p in pts]
        ax.plot(eps, [p["robust_accuracy"] for p in pts], "o-", color=colour, label=f"robust: {_label(run)}")
        if eps and run.clean_accuracy is not None:
            ax.plot([min(eps), max(eps)], [run.clean_accuracy] * 2, "--", color=colour, label=f"clean: {_label(run)}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epsilon (L-inf, pixels in [0, 1])" if runs and runs[0].attack != "l2_pgd" else "epsilon (L2)")
    ax.set_ylabel("accuracy")
    first = runs[0]
    ax.set_title(f"{first.task} / {first.backbone}: {first.attack}, {first.config.get('steps')} steps")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def perturbation_image(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """The difference scaled to [0, 255] (uint8) so a perturbation of a few levels is visible."""
    diff = adversarial.astype(np.float64) - clean.astype(np.float64)
    low, high = diff.min(), diff.max()
    if high - low <= 0:
        return np.full(diff.shape, 128, np.uint8)
    return np.round((diff - low) / (high - low) * 255).astype(np.uint8)


def examples_figure(examples: dict, class_names: list[str], path: Path) -> Path | None:
    """One row per example: clean, adversarial, perturbation, Grad-CAM clean, Grad-CAM adversarial."""
    n = len(examples.get("index", ()))
    if n == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5 if "clean_heatmap" in examples else 3
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.3 * n), dpi=100, squeeze=False)

    def name(c) -> str:
        c = int(c)
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    for row in range(n):
        clean, adv = examples["clean"][row], examples["adversarial"][row]
        panels = [
            (clean, f"clean: {name(examples['clean_class'][row])}"),
            (adv, f"eps {examples['epsilon'][row]}: {name(examples['adversarial_class'][row])}"),
            (perturbation_image(clean, adv), "perturbation (scaled)"),
        ]
        for col, (img, title) in enumerate(panels):
            axes[row, col].imshow(np.clip(img, 0, 255 if img.dtype == np.uint8 else 1))
            axes[row, col].set_title(title, fontsize=7)
        if cols == 5:
            for col, (img, key) in enumerate(((clean, "clean_heatmap"), (adv, "adversarial_heatmap")), start=3):
                axes[row, col].imshow(img)
                axes[row, col].imshow(examples[key][row], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                axes[row, col].set_title(f"Grad-CAM {'clean' if key.startswith('clean') else 'adversarial'}", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def load_examples(run: RunRecord) -> dict:
    if not run.artefacts:
        return {}
    path = Path(run.artefacts) / "examples.npz"
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def report_dir(run: RunRecord, default_root: Path) -> Path:
    base = Path(run.artefacts) if run.artefacts else default_root / str(run.id)
    return base / "report"


def write_report(store: AuditStore, run_id: int, *, artefacts_root: Path, out_dir: Path | None = None) -> Path:
    """Write the figure, the examples and the page for a run; returns the page's path."""
    run = store.get_run(run_id)
    if run.status != "succeeded":
        raise ValueError(f"expected a succeeded run to report on, run {run_id} is {run.status}" + (f": {run.error}" if run.error else ""))
    out = out_dir or report_dir(run, artefacts_root)
    out.mkdir(parents=True, exist_ok=True)
    partner = store.partner_run(run)
    runs = sorted([run] + ([partner] if partner else []), key=lambda r: r.attention, reverse=True)
    accuracy_figure(runs, out / FIGURE)
    class_names = list(store.audit_set(run.audit_set).class_names) if run.audit_set else []
    examples = examples_figure(load_examples(run), class_names, out / EXAMPLES)
    page = out / PAGE
    page.write_text(render_page(run, partner, has_examples=examples is not None))
    return page


def render_page(run: RunRecord, partner: RunRecord | None, *, has_examples: bool) -> str:
    """A self-contained HTML page (the PNGs beside it)."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(p['epsilon'])}</td><td>{p['robust_accuracy']:.3f}</td><td>{p['balanced_robust_accuracy']:.3f}</td>"
        f"<td>{p['attacked']}</td><td>{p['fooled']}</td>"
        f"<td>{'' if p['noise_robust_accuracy'] is None else format(p['noise_robust_accuracy'], '.3f')}</td></tr>"
        for p in run.points
    )
    checks = "".join(
        f"<li>{'passed' if s['passed'] else '<strong>FAILED</strong>'}: {e(s['check'])}: {e(s['detail'])}</li>" for s in run.sanity
    )
    compared = f"<p>Compared with {e(_label(partner))}, run {partner.id}.</p>" if partner else "<p>No partner run with the other attention setting yet.</p>"
    examples = f'<h2>Example perturbations and Grad-CAM</h2><img src="{EXAMPLES}" alt="clean, adversarial, perturbation and Grad-CAM">' if has_examples else "<p>No image was fooled: no examples.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Audit run {run.id}: {e(run.model)} v{run.version}</title></head>
<body>
<h1>Audit run {run.id}: {e(run.model)} version {run.version}</h1>
<p>{e(run.attack)} through the {e(run.backend)} backend, {e(str(run.config.get('steps')))} steps,
{e(str(run.config.get('restarts')))} restart(s), {e(str(run.config.get('samples')))} images of {e(str(run.config.get('dataset')))};
clean accuracy {run.clean_accuracy:.3f} (balanced {run.balanced_clean_accuracy:.3f}), robustness score {run.robustness_score:.3f},
{run.duration_seconds:.1f} s.</p>
{compared}
<img src="{FIGURE}" alt="clean and robust accuracy against epsilon">
<table><thead><tr><th>epsilon</th><th>robust accuracy</th><th>balanced</th><th>attacked</th><th>fooled</th><th>noise reference</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Sanity checks</h2><ul>{checks}</ul>
{examples}
</body></html>
"""
