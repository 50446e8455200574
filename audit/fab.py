"""Targeted L-infinity FAB (Croce & Hein, ICML 2020), AutoAttack's FAB-T, against a served model over `vjp`.

Faithful to the reference implementation (auto-attack's `fab_base.py`, `fab_pt.py`,
`fab_projections.py`) as AutoAttack's standard version runs it: one run per target class, the top
min(9, K-1) other classes by clean logits (as APGD-T), each over the images no earlier target fooled
within epsilon; n_restarts = 1, so no random start (the iterate starts at the clean image) and
nothing is drawn at random; 100 iterations, alpha_max = 0.1, eta = 1.05, beta = 0.9. Each
iteration linearises the margin f = z_t - z_y at the iterate x_k, projects both x_k and the clean
image x onto the hyperplane f(x_k) + w.(v - x_k) = 0 within the box [0, 1] (the reference's exact
L-infinity projection, `projection_linf`), and moves to
    (x_k + eta d_k)(1 - alpha) + (x + eta d_0) alpha,   alpha = min(|d_k| / (|d_k| + |d_0|), alpha_max),
clipped to [0, 1]. A point that misclassifies is kept if it is the closest to x so far, and the
iterate steps back towards x: x + beta (x_k - x). FAB minimises the perturbation, unbounded by
epsilon; epsilon only decides, at the end, whether the closest misclassified point counts.

The margin's gradient comes from `vjp` with the cotangent e_t - e_y, a constant, so every gradient is
exact at its own iterate; the logits the same call returns say whether the iterate misclassifies
(the reference asks a second forward). An image whose closest misclassified point is already within
epsilon is not iterated further (the reference keeps shrinking it: `minimise=True` does too); its
verdict cannot change, only its example's size.

Cost per target: one call at the clean image, one per iteration on the images still iterated, and
one more on the images that stepped back at that iteration (their gradient moved with them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from audit.apgd import target_classes
from audit.attack_base import Candidates, SingleAttack, Target
from audit.attack_run import AttackRun, check_at_least, check_inputs, check_output, true_class_margin, unattacked
from training.contract.attacks import ATTACKS, AttackSpec

# (x float32 [n,H,W,3] in [0,1], cotangent float32 [n,K]) -> (logits [n,K] at x, cotangent . dlogits/dx [n,H,W,3])
LogitsAndGradient = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
N_TARGET = 9
SMALLEST_STEP = 1e-8  # the reference's floor on a projection's size, so alpha is defined at the boundary


def fab_targeted(
    logits_and_gradient: LogitsAndGradient,
    images: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    *,
    clean_logits: np.ndarray,
    iterations: int = 100,
    n_target: int = N_TARGET,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
    minimise: bool = False,
) -> AttackRun:
    """FAB-T: one run of `iterations` per target class, over the images no earlier target fooled within `epsilon`.

    An image is fooled when the closest misclassified point FAB found is within `epsilon`; it then
    comes back as that point, else as the clean image (the reference's). Images the clean logits
    already misclassify are not attacked. `margins` has iterations + 1 rows: per row, the lowest
    true-class margin over the iterates inside the epsilon ball so far, over all targets (row 0: the
    clean image, where FAB starts).
    """
    x, y, z = check_inputs(images, labels, epsilon, clean_logits)
    check_at_least("iterations", iterations, 1)
    check_at_least("n_target", n_target, 1)
    if not 0.0 <= alpha_max <= 1.0:
        raise ValueError(f"expected 0 <= alpha_max <= 1, got {alpha_max}")
    if not eta >= 1.0:
        raise ValueError(f"expected eta >= 1 (an overshoot), got {eta}")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"expected 0 < beta < 1, got {beta}")
    result = unattacked(x, y, z, iterations + 1)
    standing = z.argmax(axis=1) == y
    if epsilon == 0 or not standing.any():
        return result
    targets = target_classes(z, y, n_target)
    margins = result.margins.copy()
    calls = 0
    for j in range(targets.shape[1]):
        idx = np.flatnonzero(standing)
        if idx.size == 0:
            break
        run = _run(logits_and_gradient, x[idx], y[idx], targets[idx, j], z.shape[1], float(epsilon), iterations,
                   alpha_max, eta, beta, minimise)
        result.adversarial[idx] = run.adversarial
        result.fooled[idx] = run.fooled
        margins[:, idx] = np.minimum(margins[:, idx], run.margins)
        standing[idx[run.fooled]] = False
        calls += run.calls
    return AttackRun(result.adversarial, result.fooled, margins, calls)


def _run(
    logits_and_gradient: LogitsAndGradient, x: np.ndarray, y: np.ndarray, t: np.ndarray, k: int, eps: float,
    iterations: int, alpha_max: float, eta: float, beta: float, minimise: bool,
) -> AttackRun:
    """One FAB run towards target `t` over images the model classifies correctly."""
    n = len(x)
    clean = x.reshape(n, -1).astype(np.float64)
    cotangent = (np.eye(k)[t] - np.eye(k)[y]).astype(np.float32)

    def call(rows: np.ndarray) -> None:
        out, grad = logits_and_gradient(iterate[rows], cotangent[rows])
        logits[rows] = check_output("logits", out, (len(rows), k))
        gradient[rows] = check_output("gradient", grad, (len(rows), *x.shape[1:]))

    iterate = x.copy()
    logits = np.empty((n, k), np.float32)
    gradient = np.empty_like(x)
    everyone = np.arange(n)
    call(everyone)
    calls = 1
    best, best_distance = x.copy(), np.full(n, np.inf)
    lowest = true_class_margin(logits, y)
    margins = np.empty((iterations + 1, n), np.float32)
    margins[0] = lowest
    active = np.ones(n, bool)
    for i in range(iterations):
        a = np.flatnonzero(active)
        if a.size == 0:
            margins[i + 1 :] = lowest
            break
        here = iterate[a].reshape(len(a), -1).astype(np.float64)
        w = gradient[a].reshape(len(a), -1).astype(np.float64)
        f = logits[a, t[a]].astype(np.float64) - logits[a, y[a]]
        b = (w * here).sum(axis=1) - f  # the linearised boundary: w.v = b
        d = projection_linf(np.concatenate([here, clean[a]]), np.concatenate([w, w]), np.concatenate([b, b]))
        size = np.maximum(np.abs(d).max(axis=1), SMALLEST_STEP)
        d_here, d_clean = d[: len(a)], d[len(a) :]
        alpha = np.clip(size[: len(a)] / (size[: len(a)] + size[len(a) :]), 0.0, alpha_max)[:, None]
        moved = np.clip((here + eta * d_here) * (1 - alpha) + (clean[a] + eta * d_clean) * alpha, 0.0, 1.0)
        iterate[a] = moved.reshape(iterate[a].shape).astype(np.float32)
        call(a)
        calls += 1

        distance = np.abs(iterate[a].astype(np.float64) - x[a]).reshape(len(a), -1).max(axis=1)
        inside = distance <= eps
        if inside.any():
            lowest[a[inside]] = np.minimum(lowest[a[inside]], true_class_margin(logits[a[inside]], y[a[inside]]))
        margins[i + 1] = lowest
        wrong = logits[a].argmax(axis=1) != y[a]
        if not wrong.any():
            continue
        closer = wrong & (distance < best_distance[a])
        best[a[closer]], best_distance[a[closer]] = iterate[a[closer]], distance[closer]
        back = a[wrong]
        iterate[back] = (x[back] + (iterate[back] - x[back]) * np.float32(beta)).astype(np.float32)
        if not minimise:
            active[back[best_distance[back] <= eps]] = False
        again = back[active[back]]
        if again.size and i + 1 < iterations:
            call(again)
            calls += 1
    fooled = best_distance <= eps
    adversarial = np.where(fooled[:, None, None, None], best, x)
    return AttackRun(adversarial, fooled, margins, calls)


def projection_linf(points: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the smallest L-infinity step d with w.(points + d) = b and points + d in [0, 1] (float64 [m, D]).

    The reference's `projection_linf`, line for line: where the box keeps the hyperplane out of reach
    the step is the box corner towards it (the largest step the box allows); coordinates where w = 0
    do not move.
    """
    t = np.asarray(points, np.float64)
    w = np.asarray(w, np.float64).copy()
    b = np.asarray(b, np.float64).copy()
    rows, dims = np.arange(len(t)), t.shape[1]
    sign = np.where((w * t).sum(axis=1) - b >= 0, 1.0, -1.0)
    w *= sign[:, None]
    b *= sign
    a = (w < 0).astype(np.float64)
    nonzero = (w != 0).astype(np.float64)
    d = (a - t) * nonzero
    p = a - t * (2 * a - 1)
    # Unstable, as torch.argsort: coordinates tied in p leave the breakpoint's value unchanged (each
    # adds -w_i d_i - |w_i| p_i = 0 to it), and quicksort is several times faster than a stable sort.
    order = np.argsort(p, axis=1)
    b = b - (w * t).sum(axis=1)
    b0 = (w * d).sum(axis=1)
    descending = order[:, ::-1]
    ws = np.take_along_axis(w, descending, axis=1)
    s = np.cumsum(np.abs(ws), axis=1)
    sb = np.cumsum(-ws * np.take_along_axis(d, descending, axis=1), axis=1) + b0[:, None]
    b2 = sb[:, -1] - s[:, -1] * p[rows, order[:, 0]]
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & ~c_l
    # Binary search, per row of c2, for the breakpoint where the hyperplane is met.
    lb = np.zeros(int(c2.sum()))
    ub = np.full_like(lb, dims - 1)
    order_, sb_, s_, p_, b_ = order[c2], sb[c2], s[c2], p[c2], b[c2]
    r2 = np.arange(len(lb))
    for _ in range(math.ceil(math.log2(dims))):
        middle = np.floor((lb + ub) / 2)
        m = middle.astype(np.int64)
        current = order_[r2, dims - 1 - m]
        reached = b_ - (sb_[r2, m] - s_[r2, m] * p_[r2, current]) > 0
        lb = np.where(reached, middle, lb)
        ub = np.where(reached, ub, middle)
    lb_index = lb.astype(np.int64)
    if c_l.any():
        step = np.maximum((b[c_l] - sb[c_l, -1]) / -s[c_l, -1], 0.0)[:, None]
        d[c_l] = (2 * a[c_l] - 1) * step
    if c2.any():
        step = np.maximum((b[c2] - sb[c2][r2, lb_index]) / -s[c2][r2, lb_index], 0.0)[:, None]
        d[c2] = np.minimum(step, d[c2]) * a[c2] + np.maximum(-step, d[c2]) * (1 - a[c2])
    projected: np.ndarray = d * nonzero
    return projected


class FABT(SingleAttack):
    """Targeted L-infinity FAB towards each of the top min(9, K-1) other classes (AutoAttack's FAB-T)."""

    spec: ClassVar[AttackSpec] = ATTACKS["fab_t"]

    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        """FAB-T draws nothing at random: `rng` is unused (AutoAttack's FAB-T has no random start)."""
        run = fab_targeted(target.served.logits_and_gradient, images, labels, epsilon, clean_logits=clean_logits,
                           iterations=int(self.budget["steps"]))
        return Candidates(run.adversarial, run.margins)
