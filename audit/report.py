"""Per-run reports: the paper's accuracy-against-epsilon figure, example perturbations, Grad-CAM.

The accuracy figure shows each class's robust accuracy beside the mean (with its 95% Wilson band)
and the worst class (with its own), and a degenerate model says so. Figures are drawn on matplotlib Figure
objects, never pyplot's global state, so front-end threads can draw them at once.

Drawn from the store and the run's saved examples alone (no model server needed), as PNG files
and one HTML page beside them.
"""

from __future__ import annotations

import contextlib
import html
import os
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsInt

import numpy as np

from audit.gradient_check import black_box_attack
from audit.results import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, DEGENERATE_SHARE, GRADIENT_CHECK, balanced_max_share
from audit.store import AuditStore, RunRecord
from service.readable import duration_text, epsilon_text, grey_levels

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURE = "accuracy.png"
EXAMPLES = "examples.png"
PAGE = "index.html"


def _label(run: RunRecord) -> str:
    return f"{'attention' if run.attention else 'baseline'} ({run.model} v{run.version})"


def _attacked(run: RunRecord) -> list[Mapping[str, Any]]:
    """The points at non-zero epsilons (the log axis cannot show 0; clean accuracy stands for it)."""
    return [p for p in run.points if p["epsilon_value"] > 0]


def _band(ax: Axes, pts: Sequence[Mapping[str, Any]], colour: str, label: str) -> None:
    """The 95% Wilson band of robust accuracy, where the points have one."""
    if pts and all(p.get("robust_accuracy_lower") is not None for p in pts):
        ax.fill_between(
            [p["epsilon_value"] for p in pts], [p["robust_accuracy_lower"] for p in pts],
            [p["robust_accuracy_upper"] for p in pts], color=colour, alpha=0.15, linewidth=0, label=label,
        )


def _worst_band(ax: Axes, pts: Sequence[Mapping[str, Any]], colour: str, label: str) -> None:
    """The worst class's own 95% Wilson band (over that class's images), where the points have one."""
    if pts and all(p.get("worst_class_robust_accuracy_lower") is not None for p in pts):
        ax.fill_between(
            [p["epsilon_value"] for p in pts], [p["worst_class_robust_accuracy_lower"] for p in pts],
            [p["worst_class_robust_accuracy_upper"] for p in pts], color=colour, alpha=0.12, linewidth=0, hatch="//",
            label=label,
        )


def _worst(ax: Axes, pts: Sequence[Mapping[str, Any]], colour: str, label: str, **style: Any) -> None:
    if pts and all(p.get("worst_class_robust_accuracy") is not None for p in pts):
        ax.plot([p["epsilon_value"] for p in pts], [p["worst_class_robust_accuracy"] for p in pts], "v:", color=colour,
                label=label, **style)


# Type sizes in points at the figures' 100 dpi (1 pt = 1.39 px): the PNGs are drawn 1000 px wide,
# the width the Audits page shows them at on a 1280 px screen, so a 9 pt legend reads as 12.5 px there.
DPI = 100
FIGURE_WIDTH = 10.0  # inches: 1000 px
LEGEND_PT = 9
TICK_PT = 8.5
LABEL_PT = 10
TITLE_PT = 11


def _linf(run: RunRecord) -> bool:
    return run.attack != "l2_pgd"


def _axis(ax: Axes, run: RunRecord, title: str, *, legend: bool = True) -> None:
    pts = _attacked(run)
    ax.set_xscale("log")
    ax.minorticks_off()
    if pts:  # the grid's own epsilons, as written, rather than powers of ten; L-inf also in grey levels
        labels = [f"{p['epsilon']}\n{grey_levels(p['epsilon_value'])}" if _linf(run) else p["epsilon"] for p in pts]
        ax.set_xticks([p["epsilon_value"] for p in pts], labels=labels, rotation=45, fontsize=TICK_PT)
    ax.tick_params(axis="y", labelsize=TICK_PT)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epsilon (L2)" if not _linf(run) else "epsilon (L-inf, pixels in [0, 1]; under it, x/255)", fontsize=LABEL_PT)
    ax.set_ylabel("accuracy", fontsize=LABEL_PT)
    ax.set_title(title, fontsize=TITLE_PT)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=LEGEND_PT, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)


def _chance(ax: Axes, classes: int) -> None:
    """Chance level, 1/K: a robust accuracy at or under it is what guessing gets."""
    if classes > 0:
        ax.axhline(
            1.0 / classes, color="dimgrey", linestyle="-.", linewidth=1.2, label=f"chance (1/{classes} = {1.0 / classes:.2f})"
        )


def _share(run: RunRecord) -> float | None:
    """The share `degenerate` was judged on: class-balanced since revision 0003, by image before."""
    return run.balanced_predicted_class_max_share if run.balanced_predicted_class_max_share is not None \
        else run.predicted_class_max_share


def _degenerate_note(run: RunRecord) -> str:
    share = _share(run)
    return f"DEGENERATE: {share:.0%} of answers are one class" if run.degenerate and share is not None else ""


def draw_accuracy(runs: list[RunRecord], class_names: Sequence[str] = ()) -> Figure:
    """The accuracy-against-epsilon figure (a matplotlib Figure, no pyplot: the front end draws in threads).

    Top (or left, for one run): per model, mean robust accuracy with its 95% Wilson band, the worst
    class (dotted) and clean accuracy (dashed), over chance (1/K, dash-dotted). Then one panel per
    model: every class's robust accuracy, by name, beside the mean and the worst class, so a model
    that keeps one class and loses the others shows as such.
    """
    from matplotlib.figure import Figure

    classes = sorted({c for run in runs for p in run.points for c in (p["per_class"] or {})})
    k = len(class_names) or len(classes)
    n = len(runs)
    if n == 1:  # the summary beside the one run's classes
        fig = Figure(figsize=(FIGURE_WIDTH, 7.0), dpi=DPI, layout="constrained")
        grid = fig.add_gridspec(1, 2)
        ax = summary = fig.add_subplot(grid[0, 0])
        panels = [fig.add_subplot(grid[0, 1])]
    else:  # the summary across the top, one panel per run below
        fig = Figure(figsize=(FIGURE_WIDTH, 11.5), dpi=DPI, layout="constrained")
        grid = fig.add_gridspec(2, n, height_ratios=(1, 1.15))
        ax = summary = fig.add_subplot(grid[0, :])
        panels = [fig.add_subplot(grid[1, i]) for i in range(n)]
    for run, colour in zip(runs, ("tab:red", "tab:blue", "tab:green", "tab:orange")):
        pts = _attacked(run)
        eps = [p["epsilon_value"] for p in pts]
        short = f"{'attention' if run.attention else 'baseline'} v{run.version}"  # the models are in the title
        note = " (DEGENERATE)" if run.degenerate else ""
        ax.plot(eps, [p["robust_accuracy"] for p in pts], "o-", color=colour, label=f"robust: {short}{note}")
        _band(ax, pts, colour, f"95% interval: {short}")
        _worst(ax, pts, colour, f"worst class: {short}")
        if eps and run.clean_accuracy is not None:
            ax.plot([min(eps), max(eps)], [run.clean_accuracy] * 2, "--", color=colour, label=f"clean: {short}")
    _chance(ax, k)
    first = runs[0]
    models = ", ".join(f"{run.model} v{run.version}" for run in runs)
    _axis(ax, first, f"{first.task} / {first.backbone}: {first.attack}, budget {first.budget_label}\n{models}",
          legend=n > 1)
    palette = {c: f"C{i % 10}" for i, c in enumerate(classes)}  # one colour per class in every panel
    for ax, run in zip(panels, runs):
        pts = _attacked(run)
        eps = [p["epsilon_value"] for p in pts]
        _band(ax, pts, "grey", "95% interval of the mean")
        ax.plot(eps, [p["robust_accuracy"] for p in pts], "-", color="black", linewidth=3, alpha=0.5, label="mean")
        # Drawn under the classes (a class at the bottom stays visible on it).
        _worst(ax, pts, "black", "worst class", linewidth=4, alpha=0.35, markersize=9)
        _worst_band(ax, pts, "black", "95% interval of the worst class")
        for c in classes:
            if all(c in (p["per_class"] or {}) for p in pts):
                ax.plot(eps, [p["per_class"][c] for p in pts], ".-", color=palette[c], linewidth=1.2, label=f"class {c}")
        _chance(ax, k)
        name = f"{'attention' if run.attention else 'baseline'} v{run.version}: per class"
        _axis(ax, run, name + (f"\n{_degenerate_note(run)}" if run.degenerate else ""), legend=False)
        if run.degenerate:
            ax.title.set_color("tab:red")
    # One legend for the per-class panels (a class has one colour in all of them), under them all;
    # with one run, the summary's entries join it.
    entries: dict[str, Artist] = {}
    for panel in ([] if n > 1 else [summary]) + panels:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=2 if n == 1 else 3,
               fontsize=LEGEND_PT, frameon=False)
    return fig


def accuracy_figure(runs: list[RunRecord], path: Path, class_names: Sequence[str] = ()) -> Path:
    """`draw_accuracy(runs, class_names)` saved as a PNG."""
    with _atomic(path) as tmp:
        draw_accuracy(runs, class_names).savefig(tmp, format="png")
    return path


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Write to a file beside `path`, then rename it into place: a reader (the front end serving
    the picture) sees the old file or the whole new one, never a half-written PNG."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def perturbation_image(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """The difference scaled to [0, 255] (uint8) so a perturbation of a few levels is visible."""
    diff = adversarial.astype(np.float64) - clean.astype(np.float64)
    low, high = diff.min(), diff.max()
    if high - low <= 0:
        return np.full(diff.shape, 128, np.uint8)
    scaled: np.ndarray = np.round((diff - low) / (high - low) * 255).astype(np.uint8)
    return scaled


def examples_figure(examples: Mapping[str, np.ndarray], class_names: list[str], path: Path) -> Path | None:
    """One row per example: clean, adversarial, perturbation, Grad-CAM clean, Grad-CAM adversarial,
    and under the Grad-CAM columns the colour scale (jet, 0 = low to 1 = high)."""
    n = len(examples.get("index", ()))
    if n == 0:
        return None
    from matplotlib.figure import Figure

    cols = 5 if "clean_heatmap" in examples else 3
    # 1000 px wide at most (the width the Audits page shows it at on a 1280 px screen).
    width = FIGURE_WIDTH * cols / 5
    fig = Figure(figsize=(width, 2.45 * n + (0.7 if cols == 5 else 0)), dpi=DPI, layout="constrained")
    # A thin last row holds the Grad-CAM colour scale under its two columns; every image row keeps its size.
    grid = fig.add_gridspec(n + (cols == 5), cols, height_ratios=[1.0] * n + ([0.08] if cols == 5 else []))
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(cols)] for r in range(n)])

    def name(c: SupportsInt) -> str:
        index = int(c)
        return class_names[index] if 0 <= index < len(class_names) else str(index)

    def wrapped(text: str) -> str:  # class names such as "synthetic lesion: ring" fit a 200 px column on two lines
        return textwrap.fill(text, 26)

    image = None
    for row in range(n):
        clean, adv = examples["clean"][row], examples["adversarial"][row]
        eps = examples["epsilon"][row]
        shown_eps = epsilon_text(eps) if _is_number(eps) else str(eps)
        panels = [
            (clean, wrapped(f"clean: {name(examples['clean_class'][row])}")),
            (adv, wrapped(f"eps {shown_eps}: {name(examples['adversarial_class'][row])}")),
            (perturbation_image(clean, adv), "perturbation (scaled)"),
        ]
        for col, (img, title) in enumerate(panels):
            axes[row, col].imshow(np.clip(img, 0, 255 if img.dtype == np.uint8 else 1))
            axes[row, col].set_title(title, fontsize=LEGEND_PT)
        if cols == 5:
            for col, (img, key) in enumerate(((clean, "clean_heatmap"), (adv, "adversarial_heatmap")), start=3):
                axes[row, col].imshow(img)
                image = axes[row, col].imshow(examples[key][row], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                axes[row, col].set_title(f"Grad-CAM {'clean' if key.startswith('clean') else 'adversarial'}", fontsize=LEGEND_PT)
        for ax in axes[row]:
            ax.axis("off")
    if image is not None:
        bar = fig.colorbar(image, cax=fig.add_subplot(grid[n, 3:]), orientation="horizontal")
        bar.set_label("Grad-CAM weight, jet colour map: 0 = low, 1 = high", fontsize=LEGEND_PT)
        bar.ax.tick_params(labelsize=TICK_PT)
        if bar.solids is not None:
            bar.solids.set_alpha(0.45)  # the overlay's own blend, so the bar shows the colours the maps show
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _is_number(text: Any) -> bool:  # anything float() may take, or refuse
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def load_examples(run: RunRecord) -> dict[str, np.ndarray]:
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


def dominant_class(store: AuditStore, run: RunRecord) -> str | None:
    """The class a run's model answers most often on its audit set's clean images, each true class
    weighted equally as `degenerate` weighs them (its name when known)."""
    samples = store.samples(run.id)
    _share, top = balanced_max_share([s["label"] for s in samples], [s["clean_class"] for s in samples])
    if top is None:
        return None
    names = store.audit_set(run.audit_set).class_names if run.audit_set else ()
    return names[top] if 0 <= top < len(names) else str(top)


def degenerate_warning(run: RunRecord, dominant: str | None) -> str | None:
    """One sentence for a degenerate run (plain text), None for any other."""
    if not run.degenerate:
        return None
    which = f"class {dominant}" if dominant is not None else "one class"
    share = _share(run)
    return (
        f"Degenerate model: it answers {which} for {share or 0:.0%} of the audit set's images, each true class weighted "
        f"equally (threshold {DEGENERATE_SHARE:.0%}). Its robust accuracy is that class's share, not robustness: "
        "read the worst class."
    )


def black_box_warning(run: RunRecord) -> str | None:
    """One sentence for a run whose served gradient failed its consistency check (plain text), None for any other."""
    if not run.black_box_only:
        return None
    ran = black_box_attack(run.attack) or "a query-only attack"
    return (
        f"Black-box only: the served gradient does not agree with finite differences of the served forward "
        f"({GRADIENT_CHECK} failed), so {run.attack} was not run; these figures are {ran}'s, an upper bound on "
        "robust accuracy that no gradient attack has tested."
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def with_interval(value: float | None, lower: float | None, upper: float | None) -> str:
    """'a [lo, hi]': a figure with its 95% interval, or the figure alone when it has none."""
    if value is None:
        return ""
    if lower is None or upper is None:
        return _number(value)
    return f"{value:.3f} [{lower:.3f}, {upper:.3f}]"


INTERVALS_NOTE = (
    "Each figure is followed by its 95% interval [lower, upper]: the 95% Wilson score interval for robust accuracy "
    "(over all images) and for each class (over that class's images); the worst class is the class with the lowest "
    "figure (of equals, the one with fewer images) and carries that class's own Wilson interval; balanced accuracy's "
    f"interval is a percentile bootstrap over images, stratified by class, {BOOTSTRAP_RESAMPLES} resamples, seed "
    f"{BOOTSTRAP_SEED}."
)


def points_table(run: RunRecord) -> tuple[list[str], list[list[str]]]:
    """The per-epsilon figures as a header and text rows: the epsilon (and, for L-inf, in grey
    levels of 255), the mean, the worst class (and which), the balanced figure and every class's
    robust accuracy, by name, each as 'a [lo, hi]' with its 95% interval where the run has one."""
    classes = sorted({c for p in run.points for c in (p["per_class"] or {})})
    levels = ["in 1/255"] if _linf(run) else []
    header = ["epsilon", *levels, "robust accuracy [95%]", "worst class [95%]", "balanced [95%]",
              *(f"class {c} [95%]" for c in classes), "attacked", "fooled", "uniform noise"]
    rows = []
    for p in run.points:
        per_class = p["per_class"] or {}
        intervals = p.get("class_intervals") or {}
        worst = with_interval(p.get("worst_class_robust_accuracy"), p.get("worst_class_robust_accuracy_lower"),
                              p.get("worst_class_robust_accuracy_upper"))
        rows.append([
            p["epsilon"], *([grey_levels(p["epsilon_value"])] if levels else []),
            with_interval(p["robust_accuracy"], p.get("robust_accuracy_lower"), p.get("robust_accuracy_upper")),
            worst + (f" ({p['worst_class']})" if worst and p.get("worst_class") else ""),
            with_interval(p["balanced_robust_accuracy"], p.get("balanced_robust_accuracy_lower"),
                          p.get("balanced_robust_accuracy_upper")),
            *(with_interval(per_class.get(c), *(intervals.get(c) or (None, None))) for c in classes),
            str(p["attacked"]), str(p["fooled"]), _number(p["noise_robust_accuracy"]),
        ])
    return header, rows


def clean_figures(run: RunRecord) -> str:
    """'clean accuracy a [lo, hi] (balanced b [lo, hi])', as the page and the report say it."""
    clean = with_interval(run.clean_accuracy, run.clean_accuracy_lower, run.clean_accuracy_upper)
    balanced = with_interval(run.balanced_clean_accuracy, run.balanced_clean_accuracy_lower, run.balanced_clean_accuracy_upper)
    return f"clean accuracy {clean}" + (f" (balanced {balanced})" if balanced else "")


def write_report(store: AuditStore, run_id: int, *, artefacts_root: Path, out_dir: Path | None = None) -> Path:
    """Write the figure, the examples and the page for a run; returns the page's path."""
    run = store.get_run(run_id)
    if run.status != "succeeded":
        raise ValueError(f"expected a succeeded run to report on, run {run_id} is {run.status}" + (f": {run.error}" if run.error else ""))
    out = out_dir or report_dir(run, artefacts_root)
    out.mkdir(parents=True, exist_ok=True)
    partner = store.partner_run(run)
    runs = sorted([run] + ([partner] if partner else []), key=lambda r: r.attention, reverse=True)
    class_names = list(store.audit_set(run.audit_set).class_names) if run.audit_set else []
    accuracy_figure(runs, out / FIGURE, class_names)
    examples = examples_figure(load_examples(run), class_names, out / EXAMPLES)
    page = out / PAGE
    with _atomic(page) as tmp:
        tmp.write_text(render_page(run, partner, has_examples=examples is not None, dominant=dominant_class(store, run),
                                   class_names=class_names))
    return page


def render_page(
    run: RunRecord, partner: RunRecord | None, *, has_examples: bool, dominant: str | None = None,
    class_names: Sequence[str] = (),
) -> str:
    """A self-contained HTML page (the PNGs beside it)."""
    e = html.escape
    header, table = points_table(run)
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in cells) + "</tr>" for cells in table)
    warning = degenerate_warning(run, dominant)
    warning = f'<p class="problem"><strong>{e(warning)}</strong></p>' if warning else ""
    black_box = black_box_warning(run)
    warning += f'<p class="problem" id="black-box-only"><strong>{e(black_box)}</strong></p>' if black_box else ""
    attacks = ", ".join(f"{e(name)} fooled {count}" for name, count in run.fooled_by.items())
    provenance = f"Attack seed {run.seed}" + (f"; {attacks}" if attacks else "") + "." if run.seed is not None else ""
    checks = "".join(
        f"<li>{'passed' if s['passed'] else '<strong>FAILED</strong>'}: {e(s['check'])}: {e(s['detail'])}</li>" for s in run.sanity
    )
    classes = len(class_names) or len({c for p in run.points for c in (p["per_class"] or {})})
    chance = f" Chance level is 1/{classes} = {1 / classes:.3f}." if classes else ""
    compared = (
        f"<p>Compared with {e(_label(partner))}, run {partner.id}.</p>" if partner
        else "<p>No partner run with the other attention setting yet.</p>"
    )
    examples = (
        f'<h2>Example perturbations and Grad-CAM</h2><img src="{EXAMPLES}" alt="clean, adversarial, perturbation and Grad-CAM">'
        if has_examples else "<p>No image was fooled: no examples.</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Audit run {run.id}: {e(run.model)} v{run.version}</title>
<style>img {{ max-width: 100%; height: auto; }} td {{ white-space: nowrap; }}</style></head>
<body>
<h1>Audit run {run.id}: {e(run.model)} version {run.version}</h1>
<p>{e(run.attack)} through the {e(run.backend)} backend, <strong id="budget">budget: {e(run.budget_label)}</strong>,
{e(str(run.config.get('steps')))} steps,
{e(str(run.config.get('restarts')))} restart(s), {e(str(run.config.get('samples')))} images of {e(str(run.config.get('dataset')))};
{e(clean_figures(run))}, robustness score {run.robustness_score:.3f}
(mean robust accuracy over the non-zero epsilons), {e(duration_text(run.duration_seconds))}. {provenance}</p>
{warning}
{compared}
<img src="{FIGURE}" alt="robust accuracy against epsilon: mean with its 95% Wilson band, worst class and every class">
<table><thead><tr>{head}</tr></thead>
<tbody>{rows}</tbody></table>
<p>Every figure above is {e(run.attack)} at the {e(run.budget_label)} budget.
Robust accuracy is counted over {e(str(run.audit_set_size))} images. {e(INTERVALS_NOTE)}
Epsilon is the largest change allowed to any pixel on a 0-1 scale: 0.01 is {grey_levels(0.01)} grey levels.{chance}</p>
<h2>Sanity checks</h2><ul>{checks}</ul>
{examples}
</body></html>
"""
