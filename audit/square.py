"""L-infinity Square Attack (Andriushchenko et al., ECCV 2020) against a served model, by queries only.

Faithful to the reference (the authors' `square_attack_linf`, auto-attack's `square.py`): margin
loss on logits, vertical-stripe start x + eps * (+-1 per column and channel), then per step one
random square per image whose channels are set to x +- eps (the reference's +-2 eps added and
clipped to the ball) and clipped to [0, 1], accepted only when the margin decreases. The square's side
is round(sqrt(p * H * W)) in [1, min(H, W) - 1], with p halving from p_init after the reference's
query counts 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, whatever the budget: AutoAttack's
standard setting (`resc_schedule=False`). A smaller budget stops early on the same schedule (at 300
queries the square still covers p_init / 8 of the image, 20 px of a 64 px side) rather than
shrinking the squares sooner, so a reduced budget is the standard attack cut short. As the
authors' code, a square whose draw would leave the image unchanged is redrawn without a query.
Unlike the reference, a square may touch the last row and column (it draws its corner from
[0, H - s) and never does).

Per image the budget is `queries` model queries, the start included; an image stops being queried
as soon as the model misclassifies it. Each step is one batched `logits` call over the images still
standing, so `calls` is the number of steps taken + 1 and `margins` has one row per call: the lowest
true-class margin of each image so far (row 0 at the stripe start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from audit.attack_base import Candidates, SingleAttack, Target
from audit.attack_run import AttackRun, check_at_least, check_batch, check_output, merge, true_class_margin, unattacked
from training.contract.attacks import ATTACKS, AttackSpec

Logits = Callable[[np.ndarray], np.ndarray]  # x float32 [n,H,W,3] in [0,1] -> logits [n,K]
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after these queries
REDRAWS = 20  # a draw leaves the image unchanged with probability <= 1/2 per channel


def p_schedule(step: int, p_init: float) -> float:
    """The fraction of pixels the square covers at step `step` (0-based, after the start): the
    reference's `p_selection(step)`, not rescaled to the budget."""
    return float(p_init / 2 ** sum(step > h for h in HALVINGS))  # int ** int is typed Any (a negative power is a float)


def square_linf(
    logits: Logits,
    images: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    *,
    clean_logits: np.ndarray,
    queries: int = 5000,
    p_init: float = 0.8,
    rng: np.random.Generator,
) -> AttackRun:
    """Square Attack with `queries` queries per image; images the clean logits misclassify are not attacked."""
    x, y, z = check_batch(images, labels, epsilon, clean_logits, rng)
    check_at_least("queries", queries, 1)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"expected 0 < p_init <= 1, got {p_init}")
    idx = np.flatnonzero(z.argmax(axis=1) == y)
    if epsilon == 0 or idx.size == 0:
        return unattacked(x, y, z, 1)
    run = _run(logits, x[idx], y[idx], z.shape[1], float(epsilon), queries, p_init, rng)
    return merge(x, y, z, idx, run)


def _run(
    logits: Logits, x: np.ndarray, y: np.ndarray, k: int, eps: float, queries: int, p_init: float,
    rng: np.random.Generator,
) -> AttackRun:
    """One Square Attack over images the model classifies correctly."""
    n, height, width, channels = x.shape
    lo, hi = np.maximum(x - np.float32(eps), 0.0), np.minimum(x + np.float32(eps), 1.0)
    offset = np.float32(eps)

    def query(points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = check_output("logits", logits(points), (len(points), k))
        return true_class_margin(out, labels), out.argmax(axis=1) != labels

    stripes = rng.choice(np.array([-1, 1], np.float32), size=(n, 1, width, channels))
    best = np.clip(x + offset * stripes, lo, hi)
    margin, fooled = query(best, y)
    rows = [margin.copy()]
    rows_h, cols_w = np.arange(height)[None, :, None, None], np.arange(width)[None, None, :, None]
    for step in range(queries - 1):
        a = np.flatnonzero(~fooled)
        if a.size == 0:
            break
        side = round(np.sqrt(p_schedule(step, p_init) * height * width))
        side = max(min(side, min(height, width) - 1), 1)
        top = rng.integers(0, height - side + 1, size=len(a))[:, None, None, None]
        left = rng.integers(0, width - side + 1, size=len(a))[:, None, None, None]
        inside = (rows_h >= top) & (rows_h < top + side) & (cols_w >= left) & (cols_w < left + side)
        candidate = best[a].copy()
        redraw = np.ones(len(a), bool)
        for _ in range(REDRAWS):
            signs = rng.choice(np.array([-1, 1], np.float32), size=(int(redraw.sum()), 1, 1, channels))
            r = np.flatnonzero(redraw)
            ar = a[r]
            candidate[r] = np.where(inside[r], np.clip(x[ar] + offset * signs, lo[ar], hi[ar]), best[ar])
            redraw[r] = ~(np.abs(candidate[r] - best[ar]) > 1e-7).reshape(len(r), -1).any(axis=1)
            if not redraw.any():
                break
        new_margin, hit = query(candidate, y[a])
        accept = (new_margin < margin[a]) | hit
        best[a[accept]] = candidate[accept]
        margin[a[accept]] = new_margin[accept]
        fooled[a[hit]] = True
        rows.append(margin.copy())
    return AttackRun(best, fooled, np.stack(rows), len(rows))


class Square(SingleAttack):
    """L-infinity Square Attack by queries to `serving_default` only."""

    spec: ClassVar[AttackSpec] = ATTACKS["square"]

    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        run = square_linf(target.served.logits, images, labels, epsilon, clean_logits=clean_logits,
                          queries=int(self.budget["queries"]), rng=rng)
        return Candidates(run.adversarial, run.margins)
