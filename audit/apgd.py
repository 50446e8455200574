"""L-infinity APGD (Croce & Hein, ICML 2020) against a served model, stepping on the loss's gradient at each iterate.

Faithful to the reference implementation (auto-attack's `autopgd_base.py`): random start inside the
ball, step size 2*epsilon, momentum 0.75 (none on the first step), checkpoints after 22%, 41%, 57%,
... of the iterations (windows of int(0.22 N) iterations, shrinking by int(0.03 N) to at least
int(0.06 N)), and at a checkpoint the step size halves, restarting from the best point, when
(1) the loss rose in at most rho = 0.75 of the window's iterations (`<=` as the reference; the paper
writes `<`) or (2) the step size was not halved at the previous checkpoint (never at the first) and
the best loss has not improved since. The first point that misclassifies is kept and the image is
not attacked further (as AutoAttack keeps it); an image never fooled returns its best-loss point.
Unlike the reference, the first window compares the first iterate's loss with the start point's
(the reference compares it with an unset slot that holds 0).

The served `vjp` signature returns logits and gradient together but needs the cotangent dLoss/dlogits
before the logits at the new point are known. Where the previous point's cotangent gives the same
step at the new point, each iteration makes that one call, with the cotangent from the logits of the
point the step started from (the previous iterate, the best point after a restart, the clean logits
for the random start): the step direction is exact when the cotangent depends only on ranks that
cannot change: the targeted margin, e_t - e_y, always; and for K = 2 the margin (`cw`) loss,
e_other - e_true, and cross-entropy, whose cotangent is the margin's times a positive scale, so its
sign step is the same. Everywhere else (cross-entropy with K > 2, DLR, the targeted DLR, and the
margin with K > 2, whose runner-up can change) the previous point's cotangent is one iterate stale,
so each iteration asks `serving_default` for the logits at the new point first, then `vjp` at that
same point with the cotangent they give: the step is the sign of the loss's gradient at the iterate
itself. The `vjp`'s own logits cannot stand in for the forward: they come with the call that needs
the cotangent. Loss values, the best point and the fooled test always use logits at the iterate.

Cost, each call on the images not yet fooled: where one call is exact, one at the random start and
one per iteration, so at most iterations + 1 calls per run. Elsewhere a forward and a `vjp` at the
random start and per iteration, except that no `vjp` is made where its gradient would not be used:
for an image the forward shows fooled (it leaves the attack) and after the last iteration (no step
follows). So at most 2 * iterations + 1 calls, iterations + 1 of them `serving_default` (cheaper
than a `vjp`: a forward pass without the backward one). bench.audit measures what that costs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from audit.attack_run import AttackRun, check_at_least, check_batch, check_output, merge, true_class_margin, unattacked
from audit.attack_base import Candidates, SingleAttack, Target
from training.contract.attacks import ATTACKS, AttackSpec

# (x float32 [n,H,W,3] in [0,1], cotangent float32 [n,K]) -> (logits [n,K] at x, cotangent . dlogits/dx [n,H,W,3])
LogitsAndGradient = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# (x float32 [n,H,W,3] in [0,1]) -> logits [n,K] at x: the served `serving_default`
Forward = Callable[[np.ndarray], np.ndarray]
LOSSES = ("ce", "dlr", "cw")
RHO = 0.75
MOMENTUM = 0.75
DLR_GUARD = 1e-12  # the reference's guard against a zero DLR denominator


def checkpoints(iterations: int) -> tuple[int, ...]:
    """The iterations after which the step size may halve (22, 41, 57, 70, 80, 87, 93, 99 for 100)."""
    window = max(int(0.22 * iterations), 1)
    shrink = max(int(0.03 * iterations), 1)
    smallest = max(int(0.06 * iterations), 1)
    points, at = [], 0
    while at + window <= iterations:
        at += window
        points.append(at)
        window = max(window - shrink, smallest)
    return tuple(points)


def target_classes(clean_logits: np.ndarray, labels: np.ndarray, n_target: int) -> np.ndarray:
    """Per image, the min(n_target, K-1) other classes with the highest clean logits, highest first."""
    z = np.asarray(clean_logits, np.float64).copy()
    z[np.arange(len(z)), labels] = -np.inf
    return np.argsort(-z, axis=1, kind="stable")[:, : min(n_target, z.shape[1] - 1)]


def apgd(
    logits_and_gradient: LogitsAndGradient,
    images: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    *,
    clean_logits: np.ndarray,
    loss: str = "ce",
    iterations: int = 100,
    rng: np.random.Generator,
    forward: Forward | None = None,
    _stale: bool = False,
) -> AttackRun:
    """Untargeted APGD with loss "ce", "dlr" (K >= 3) or "cw" (the margin, DLR's stand-in for K = 2).

    `forward` (the served `serving_default`) is needed wherever one `vjp` call cannot give the exact
    step (see the module's docstring): CE with K > 2, DLR, the margin with K > 2. Images the clean
    logits already misclassify are not attacked (returned clean, fooled). `margins` has
    iterations + 1 rows. `_stale` is bench.audit's only: the one-call iteration with the previous
    point's cotangent everywhere, to measure what the exact gradient costs and changes.
    """
    x, y, z = check_batch(images, labels, epsilon, clean_logits, rng)
    check_at_least("iterations", iterations, 1)
    if loss not in LOSSES:
        raise ValueError(f"expected loss in {LOSSES}, got {loss!r}")
    if loss == "dlr" and z.shape[1] < 3:
        raise ValueError(f"expected at least 3 classes for the DLR loss, got {z.shape[1]}; use loss='cw'")
    objective = _OBJECTIVES[loss]
    exact_forward = _exact_forward(objective, z.shape[1], forward, _stale, f"loss {loss!r}")
    idx = np.flatnonzero(z.argmax(axis=1) == y)
    if epsilon == 0 or idx.size == 0:
        return unattacked(x, y, z, iterations + 1)
    run = _run(
        logits_and_gradient, exact_forward, x[idx], y[idx], None, z[idx], float(epsilon), objective, iterations, rng
    )
    return merge(x, y, z, idx, run)


def apgd_targeted(
    logits_and_gradient: LogitsAndGradient,
    images: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    *,
    clean_logits: np.ndarray,
    iterations: int = 100,
    n_target: int = 9,
    rng: np.random.Generator,
    forward: Forward | None = None,
    _stale: bool = False,
) -> AttackRun:
    """APGD-T: one run of `iterations` per target class, over the images no earlier target fooled.

    Targets are the top min(n_target, K-1) other classes by clean logits; the loss is the targeted
    DLR for K >= 4 (which needs `forward` for its exact step), else the targeted margin z_t - z_y.
    Success is any misclassification (as AutoAttack's apgd-t). An image never fooled returns the
    last run's best-loss point. `margins` has iterations + 1 rows: per row, the lowest true-class
    margin over all target runs by then. `_stale` as for `apgd`.
    """
    x, y, z = check_batch(images, labels, epsilon, clean_logits, rng)
    check_at_least("iterations", iterations, 1)
    check_at_least("n_target", n_target, 1)
    objective = _targeted_dlr if z.shape[1] >= 4 else _targeted_margin
    exact_forward = _exact_forward(objective, z.shape[1], forward, _stale, "the targeted DLR loss")
    result = unattacked(x, y, z, iterations + 1)
    standing = z.argmax(axis=1) == y
    if epsilon == 0 or not standing.any():
        return result
    targets = target_classes(z, y, n_target)
    margins = np.where(standing, np.inf, result.margins).astype(np.float32)
    calls = 0
    for j in range(targets.shape[1]):
        idx = np.flatnonzero(standing)
        if idx.size == 0:
            break
        run = _run(
            logits_and_gradient, exact_forward, x[idx], y[idx], targets[idx, j], z[idx], float(epsilon), objective,
            iterations, rng,
        )
        result.adversarial[idx] = run.adversarial
        result.fooled[idx] = run.fooled
        margins[:, idx] = np.minimum(margins[:, idx], run.margins)
        standing[idx[run.fooled]] = False
        calls += run.calls
    return AttackRun(result.adversarial, result.fooled, margins, calls)


# A loss maps (logits [m,K], labels [m], targets [m] or None) to (loss [m], dLoss/dlogits [m,K]), both float64.
Objective = Callable[[np.ndarray, np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]


def one_call_is_exact(loss: str, k: int) -> bool:
    """Whether untargeted APGD on `loss` ("ce", "dlr", "cw") with K = k takes one `vjp` call per iteration."""
    return _one_call_is_exact(_OBJECTIVES[loss], k)


def _one_call_is_exact(objective: Objective, k: int) -> bool:
    """Whether the previous point's cotangent gives the exact sign step at the new point (module docstring)."""
    return objective is _targeted_margin or (k == 2 and objective in (_cross_entropy, _margin))


def _exact_forward(objective: Objective, k: int, forward: Forward | None, stale: bool, what: str) -> Forward | None:
    """The forward each iteration calls before its `vjp`, or None where one `vjp` call is exact (or `stale`)."""
    if stale or _one_call_is_exact(objective, k):
        return None
    if forward is None:
        raise ValueError(
            f"expected a forward (serving_default) callable for the exact gradient of {what} with K = {k}, got None"
        )
    return forward


def _run(
    logits_and_gradient: LogitsAndGradient, forward: Forward | None, x: np.ndarray, y: np.ndarray,
    targets: np.ndarray | None, clean_logits: np.ndarray, eps: float, objective: Objective, iterations: int,
    rng: np.random.Generator,
) -> AttackRun:
    """One APGD run over images the model classifies correctly.

    With `forward`, each evaluation is a forward then a `vjp` at the same point with that point's
    cotangent; without it, one `vjp` with the cotangent of the point the step started from.
    """
    n, k = len(x), clean_logits.shape[1]
    lo, hi = np.maximum(x - np.float32(eps), 0.0), np.minimum(x + np.float32(eps), 1.0)
    calls = 0

    def evaluate(
        points: np.ndarray, rows: np.ndarray, prior: np.ndarray, grad: np.ndarray, need_gradient: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, loss and cotangent at `points` (the images `rows`); their gradient written into grad[rows].

        `prior` is the cotangent of the points the step started from, for the one-call path.
        """
        nonlocal calls
        t = None if targets is None else targets[rows]
        calls += 1
        if forward is None:
            logits, gradient = logits_and_gradient(points, prior.astype(np.float32))
            grad[rows] = check_output("gradient", gradient, points.shape)
            loss, cotangent = objective(check_output("logits", logits, (len(points), k)), y[rows], t)
            return logits, loss, cotangent
        logits = check_output("logits", forward(points), (len(points), k))
        loss, cotangent = objective(logits, y[rows], t)
        # No gradient where no step follows: an image now fooled leaves the attack; after the last iteration.
        ask = np.flatnonzero(logits.argmax(axis=1) == y[rows]) if need_gradient else np.zeros(0, np.int64)
        if ask.size:
            calls += 1
            _, gradient = logits_and_gradient(points[ask], cotangent[ask].astype(np.float32))
            grad[rows[ask]] = check_output("gradient", gradient, points[ask].shape)
        return logits, loss, cotangent

    # The reference's start: uniform noise rescaled so its largest coordinate sits on the sphere.
    noise = rng.uniform(-1.0, 1.0, size=x.shape)
    noise /= np.abs(noise).reshape(n, -1).max(axis=1).reshape(-1, 1, 1, 1) + 1e-12
    current = np.clip(x + np.float32(eps) * noise.astype(np.float32), lo, hi)
    grad = np.zeros_like(x)
    everyone = np.arange(n)
    logits, loss, cotangent = evaluate(current, everyone, objective(clean_logits, y, targets)[1], grad, True)

    fooled = logits.argmax(axis=1) != y
    adversarial = current.copy()
    lowest_margin = true_class_margin(logits, y)
    margins = np.empty((iterations + 1, n), np.float32)
    margins[0] = lowest_margin
    history = np.zeros((iterations + 1, n))  # loss at every iterate, row 0 the start
    history[0] = loss
    best, best_grad, best_loss, best_cotangent = current.copy(), grad.copy(), loss.copy(), cotangent.copy()
    previous = current.copy()
    step = np.full((n, 1, 1, 1), 2.0 * eps, np.float32)
    halved_last = np.ones(n, bool)  # the reference's start value: condition 2 cannot fire at the first checkpoint
    best_at_last = best_loss.copy()
    checks, last_check = set(checkpoints(iterations)), 0
    for i in range(iterations):
        a = np.flatnonzero(~fooled)
        if a.size == 0:
            margins[i + 1 :] = lowest_margin
            break
        here = current[a]
        pull = MOMENTUM if i > 0 else 1.0
        stepped = np.clip(here + step[a] * np.sign(grad[a]), lo[a], hi[a])
        moved = np.clip(here + pull * (stepped - here) + (1.0 - pull) * (here - previous[a]), lo[a], hi[a])
        previous[a], current[a] = here, moved
        logits, loss, cotangent[a] = evaluate(moved, a, cotangent[a], grad, i + 1 < iterations)
        history[i + 1, a] = loss
        lowest_margin[a] = np.minimum(lowest_margin[a], true_class_margin(logits, y[a]))
        margins[i + 1] = lowest_margin

        up = loss > best_loss[a]
        u = a[up]
        best[u], best_grad[u], best_loss[u], best_cotangent[u] = moved[up], grad[u], loss[up], cotangent[u]
        hit = logits.argmax(axis=1) != y[a]
        adversarial[a[hit]] = moved[hit]
        fooled[a[hit]] = True

        if i + 1 in checks:
            window = i + 1 - last_check
            rises = (history[last_check + 1 : i + 2] > history[last_check : i + 1]).sum(axis=0)
            halve = (rises <= RHO * window) | (~halved_last & (best_at_last >= best_loss))
            halved_last, best_at_last, last_check = halve, best_loss.copy(), i + 1
            step[halve] /= 2
            current[halve], grad[halve], cotangent[halve] = best[halve], best_grad[halve], best_cotangent[halve]
    adversarial[~fooled] = best[~fooled]
    return AttackRun(adversarial, fooled, margins, calls)


def _rows(z: np.ndarray) -> np.ndarray:
    return np.arange(len(z))


def _one_hot(index: np.ndarray, k: int) -> np.ndarray:
    rows: np.ndarray = np.eye(k)[index]
    return rows


def _cross_entropy(z: np.ndarray, y: np.ndarray, _targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    z = z.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(shifted).sum(axis=1))
    loss = log_total - shifted[_rows(z), y]
    softmax = np.exp(shifted - log_total[:, None])
    return loss, softmax - _one_hot(y, z.shape[1])


def _runner_up(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    others = z.copy()
    others[_rows(z), y] = -np.inf
    runner_up: np.ndarray = others.argmax(axis=1)
    return runner_up


def _margin(z: np.ndarray, y: np.ndarray, _targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    z = z.astype(np.float64)
    j = _runner_up(z, y)
    k = z.shape[1]
    return z[_rows(z), j] - z[_rows(z), y], _one_hot(j, k) - _one_hot(y, k)


def _dlr(z: np.ndarray, y: np.ndarray, _targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12), pi sorting the logits in decreasing order."""
    z = z.astype(np.float64)
    r, k = _rows(z), z.shape[1]
    order = np.argsort(-z, axis=1, kind="stable")
    j = _runner_up(z, y)
    gap = z[r, y] - z[r, j]
    scale = z[r, order[:, 0]] - z[r, order[:, 2]] + DLR_GUARD
    spread = _one_hot(order[:, 0], k) - _one_hot(order[:, 2], k)
    return -gap / scale, -(_one_hot(y, k) - _one_hot(j, k)) / scale[:, None] + (gap / scale**2)[:, None] * spread


def _targets_given(t: np.ndarray | None) -> np.ndarray:
    # The targeted losses share the Objective signature; apgd_targeted always passes their targets.
    if t is None:
        raise ValueError("expected target classes for a targeted loss, got None")
    return t


def _targeted_dlr(z: np.ndarray, y: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)."""
    t = _targets_given(t)
    z = z.astype(np.float64)
    r, k = _rows(z), z.shape[1]
    order = np.argsort(-z, axis=1, kind="stable")
    gap = z[r, y] - z[r, t]
    scale = z[r, order[:, 0]] - 0.5 * (z[r, order[:, 2]] + z[r, order[:, 3]]) + DLR_GUARD
    spread = _one_hot(order[:, 0], k) - 0.5 * (_one_hot(order[:, 2], k) + _one_hot(order[:, 3], k))
    return -gap / scale, -(_one_hot(y, k) - _one_hot(t, k)) / scale[:, None] + (gap / scale**2)[:, None] * spread


def _targeted_margin(z: np.ndarray, y: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    t = _targets_given(t)
    z = z.astype(np.float64)
    k = z.shape[1]
    return z[_rows(z), t] - z[_rows(z), y], _one_hot(t, k) - _one_hot(y, k)


_OBJECTIVES: dict[str, Objective] = {"ce": _cross_entropy, "dlr": _dlr, "cw": _margin}


# -- the registry's classes ---------------------------------------------------------------------
class _APGD(SingleAttack):
    def _steps(self) -> int:
        return int(self.budget["steps"])


class APGDCE(_APGD):
    """Untargeted APGD on cross-entropy."""

    spec: ClassVar[AttackSpec] = ATTACKS["apgd_ce"]

    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        run = apgd(target.served.logits_and_gradient, images, labels, epsilon, clean_logits=clean_logits, loss="ce",
                   iterations=self._steps(), rng=rng, forward=target.served.logits)
        return Candidates(run.adversarial, run.margins)


class APGDDLR(_APGD):
    """Untargeted APGD on the DLR loss, or on the margin where K = 2 (DLR needs three classes)."""

    spec: ClassVar[AttackSpec] = ATTACKS["apgd_dlr"]

    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        loss = "dlr" if clean_logits.shape[1] >= 3 else "cw"
        run = apgd(target.served.logits_and_gradient, images, labels, epsilon, clean_logits=clean_logits, loss=loss,
                   iterations=self._steps(), rng=rng, forward=target.served.logits)
        return Candidates(run.adversarial, run.margins)


class APGDT(_APGD):
    """Targeted APGD towards each of the top min(9, K-1) other classes."""

    spec: ClassVar[AttackSpec] = ATTACKS["apgd_t"]

    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        run = apgd_targeted(target.served.logits_and_gradient, images, labels, epsilon, clean_logits=clean_logits,
                            iterations=self._steps(), rng=rng, forward=target.served.logits)
        return Candidates(run.adversarial, run.margins)
