"""Sanity checks in the spirit of AutoAttack: signs that an attack was broken, gradients masked or the
model degenerate. Each check can fail; `tests/integration/test_audit_sanity_fixtures.py` has a
served model (or a broken attack) that makes each one fail.

The nested sweep makes robust accuracy monotone by construction and attacks epsilon 0 with the
clean image, so neither of those says anything about the attack; the checks here do:

- independent_epsilons_consistent: two grid epsilons attacked from scratch, not nested; the larger
  must not leave more images standing.
- black_box_not_stronger: Square (query-only) must not fool an image the gradient attacks left
  standing; where it does, the gradients lie (masking suspected).
- attack_made_progress: at the smallest epsilon with survivors, the gradient attack lowered their
  margins by at least a tenth of what the served gradient promises to first order.
- gradients_not_vanishing: the served margin gradient is finite and not negligible against the
  logits' scale.
- noise_not_stronger: per image, uniform noise must not fool an image the attack left standing.
- perturbations_bounded: every candidate lay inside the ball and [0, 1].
- degenerate_predictions: the clean predictions are not (nearly) all one class, each true class weighted equally.

Two more run before any attack (`preflight`, with audit.gradient_check): forward_deterministic (two
forward calls agree) and, for an attack that uses gradients, gradient_consistent (`vjp` agrees
with finite differences of `serving_default`). A model failing gradient_consistent is audited
black-box only: Square runs in place of the gradient attacks, whose figures could not be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from audit.attacks import Attacker, stages
from training.contract.attacks import NOISE_REFERENCE, attack_spec
from training.contract.config import AttackConfig
from audit.foolbox_model import AuditError, ServedModel
from audit.gradient_check import PROBE_IMAGES as GRADIENT_PROBE_IMAGES
from audit.gradient_check import black_box_attack, forward_deterministic, gradient_consistency, margin_cotangent
from audit.results import DEGENERATE_SHARE, GRADIENT_CHECK, SanityCheck, balanced_max_share
from audit.sweep import NEVER, Sweep, attack_level

CHECKS = (
    "forward_deterministic", GRADIENT_CHECK,
    "independent_epsilons_consistent", "black_box_not_stronger", "attack_made_progress", "gradients_not_vanishing",
    "noise_not_stronger", "perturbations_bounded", "degenerate_predictions",
)
VANISHING_RATIO = 1e-3  # |margin gradient|_1 below this times the logits' scale: no usable gradient
MIN_PROGRESS = 0.1  # share of the first-order margin fall a working gradient attack achieves at least
PROBE_IMAGES = 32
INDEPENDENT_IMAGES = 64
WITNESS_IMAGES = 16
# Square's budget when it only witnesses a gradient attack: 25 queries per step that attack took, at
# most 500 and never more than --queries (the ensemble runs Square with its full budget instead).
WITNESS_QUERIES = 500
WITNESS_QUERIES_PER_STEP = 25


@dataclass(frozen=True)
class Preflight:
    """The checks run before attacking, and the attack to run after them."""

    checks: tuple[SanityCheck, ...]
    config: AttackConfig  # the configured attack's, or a query-only attack's in its place

    @property
    def black_box_only(self) -> bool:
        return any(c.name == GRADIENT_CHECK and not c.passed for c in self.checks)


def preflight(served: ServedModel, images: np.ndarray, labels: np.ndarray, config: AttackConfig) -> Preflight:
    """Before attacking: the forward is deterministic, and an attack that uses gradients gets gradients that
    agree with the forward, else a query-only attack of its norm (with the configured queries) runs in its
    place. Raises AuditError when that norm has none: no figure is better than a false one."""
    checks = [forward_deterministic(served, images[:GRADIENT_PROBE_IMAGES])]
    if all(attack_spec(stage).gradient_free for stage in stages(config.attack)):
        return Preflight(tuple(checks), config)
    consistency = gradient_consistency(served, images, labels, seed=config.seed)
    replacement = black_box_attack(config.attack)
    check = consistency.sanity_check(config.attack, replacement)
    if consistency.passed:
        return Preflight((*checks, check), config)
    if replacement is None:
        raise AuditError(f"{served.model} version {served.version} cannot be audited: {check.detail}")
    return Preflight((*checks, check), config.for_attack(replacement))


def _margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    others = np.where(np.eye(logits.shape[1], dtype=bool)[labels], -np.inf, logits)
    margins: np.ndarray = logits[np.arange(len(labels)), labels] - others.max(axis=1)
    return margins


def margin_gradient_norms(served: ServedModel, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L1 norm of each image's served margin gradient, the logits) from one `vjp` call per batch.

    The L1 norm is the first-order margin change per unit of L-infinity epsilon.
    """
    logits = served.logits(images)
    _, grads = served.logits_and_gradient(images, margin_cotangent(logits, labels))
    flat = grads.reshape(len(images), -1).astype(np.float64)
    norms = np.where(np.isfinite(flat).all(axis=1), np.abs(flat).sum(axis=1), np.nan)
    return norms, logits


def gradient_check(norms: np.ndarray, logits: np.ndarray) -> SanityCheck:
    """Every probed image has a finite margin gradient that is not negligible against its logits' scale."""
    name = "gradients_not_vanishing"
    if len(norms) == 0:
        return SanityCheck(name, True, "no correctly classified image to probe")
    scale = np.maximum(np.abs(logits).max(axis=1), 1e-6)
    bad = ~np.isfinite(norms) | (norms < VANISHING_RATIO * scale)
    ratio = np.where(np.isfinite(norms), norms / scale, np.nan)
    detail = (
        f"{int(bad.sum())} of {len(norms)} images have a non-finite margin gradient or one under "
        f"{VANISHING_RATIO:g} of the logits' scale (median |grad|_1 / max|logit| = {np.nanmedian(ratio):.3g})"
    )
    return SanityCheck(name, not bad.any(), detail)


def independent_check(epsilons: tuple[str, str], standing: tuple[int, int], attacked: int, attack: str) -> SanityCheck:
    """The larger of two independently attacked epsilons leaves no more images standing than the smaller."""
    name = "independent_epsilons_consistent"
    small, large = standing
    detail = (
        f"{attack} from scratch on {attacked} images: {small} standing at {epsilons[0]}, {large} at {epsilons[1]}"
    )
    return SanityCheck(name, large <= small, detail if large <= small else detail + " (more at the larger epsilon: a broken attack)")


def black_box_check(fooled_by_square: int, standing: int, epsilon: str | None, how: str) -> SanityCheck:
    """Square found no example among the images the gradient attacks left standing."""
    name = "black_box_not_stronger"
    if epsilon is None:
        return SanityCheck(name, True, "no image survived the gradient attack at any epsilon: nothing to witness")
    detail = f"{how}: Square fooled {fooled_by_square} of {standing} images the gradient attacks left standing at {epsilon}"
    if fooled_by_square:
        detail += " (gradient masking suspected)"
    return SanityCheck(name, fooled_by_square == 0, detail)


def progress_check(achieved: np.ndarray, promised: np.ndarray, epsilon: str | None, attack: str) -> SanityCheck:
    """The survivors' margins fell by at least MIN_PROGRESS of the first-order fall their gradients promise."""
    name = "attack_made_progress"
    if epsilon is None or len(achieved) == 0:
        return SanityCheck(name, True, f"{attack} recorded no margins of surviving images: nothing to judge")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(promised > 0, achieved / promised, 0.0)
    median = float(np.median(ratio))
    detail = (
        f"{attack} at {epsilon}: survivors' margins fell by a median {float(np.median(achieved)):.4g}, "
        f"{median:.2f} of the first-order fall {float(np.median(promised)):.4g} their gradients promise "
        f"({len(achieved)} images)"
    )
    return SanityCheck(name, median >= MIN_PROGRESS, detail)


def noise_check(sweep: Sweep) -> SanityCheck:
    """Per image: uniform noise fooled none that the attack left standing at the same epsilon."""
    name = "noise_not_stronger"
    if sweep.noise_fooled_at is None:
        return SanityCheck(name, True, "noise reference not run")
    attack_at = np.where(sweep.fooled_at == NEVER, np.iinfo(np.int64).max, sweep.fooled_at)
    noise_at = np.where(sweep.noise_fooled_at == NEVER, np.iinfo(np.int64).max, sweep.noise_fooled_at)
    beaten = sweep.correct & (noise_at < attack_at)
    if not beaten.any():
        return SanityCheck(name, True, "uniform noise fooled no image before the attack did")
    where = sorted({sweep.epsilons[i] for i in sweep.noise_fooled_at[beaten]}, key=float)
    return SanityCheck(
        name, False,
        f"uniform noise fooled {int(beaten.sum())} images at a smaller epsilon than the attack "
        f"(first at {', '.join(where)}): gradient masking suspected",
    )


def bounds_check(sweep: Sweep) -> SanityCheck:
    return SanityCheck(
        "perturbations_bounded", sweep.rejected == 0,
        f"{sweep.rejected} adversarial candidates fell outside the epsilon ball or [0, 1]",
    )


def degenerate_check(labels: np.ndarray, clean_class: np.ndarray, class_names: Sequence[str] = ()) -> SanityCheck:
    """The clean predictions are spread: with each true class weighted equally, under DEGENERATE_SHARE
    of them go to one class (named when the card names it: "class 1" tells a reader nothing); the
    rule of `AuditResult.degenerate`."""
    name = "degenerate_predictions"
    if len(clean_class) == 0:
        return SanityCheck(name, True, "no image")
    share, top = balanced_max_share(labels.tolist(), clean_class.tolist())
    which = f"class {class_names[top]}" if top is not None and 0 <= top < len(class_names) else f"class {top}"
    detail = f"{share:.1%} of the clean predictions are {which}, each true class weighted equally"
    if share >= DEGENERATE_SHARE:
        detail += f" (>= {DEGENERATE_SHARE:.0%}: its robust accuracy is that class's share, not robustness)"
    return SanityCheck(name, share < DEGENERATE_SHARE, detail)


def _survivor_epsilons(sweep: Sweep) -> list[int]:
    """Indices of non-zero grid epsilons at which some correctly classified image still stands."""
    return [i for i, e in enumerate(sweep.epsilons) if float(e) > 0 and sweep.robust_mask(i).any()]


def run_checks(
    served: ServedModel, attacker: Attacker, sweep: Sweep, images: np.ndarray, labels: np.ndarray,
    config: AttackConfig, *, clean_logits: np.ndarray,
) -> tuple[SanityCheck, ...]:
    """Every check, passed or not, with a one-line detail; runs the few extra attacks they need."""
    correct = np.flatnonzero(sweep.correct)
    base = stages(config.attack)[0]
    gradient_attack = not attack_spec(base).gradient_free
    checks = [_independent(served, attacker, sweep, images, labels, clean_logits, config, base)]

    survivors_at = _survivor_epsilons(sweep)
    if not gradient_attack:
        checks.append(SanityCheck("black_box_not_stronger", True, f"{base} is itself query-only: nothing to witness"))
    elif "square" in stages(config.attack):
        checks.append(_ensemble_witness(sweep, stages(config.attack)))
    else:
        checks.append(_witness(attacker, sweep, images, labels, clean_logits, config, survivors_at))

    probe = correct[:PROBE_IMAGES]
    norms, logits = margin_gradient_norms(served, images[probe], labels[probe]) if len(probe) else (np.zeros(0), np.zeros((0, 2)))
    checks.append(_progress(served, sweep, images, labels, base if gradient_attack else None))
    checks.append(gradient_check(norms, logits))
    checks.append(noise_check(sweep))
    checks.append(bounds_check(sweep))
    checks.append(degenerate_check(sweep.labels, sweep.clean_class, tuple(served.card.get("class_names", ()))))
    return tuple(checks)


def _independent(
    served: ServedModel, attacker: Attacker, sweep: Sweep, images: np.ndarray, labels: np.ndarray, clean_logits: np.ndarray,
    config: AttackConfig, base: str,
) -> SanityCheck:
    """Attack the largest epsilon with survivors and the grid epsilon before it, each from scratch."""
    survivors_at = _survivor_epsilons(sweep)
    nonzero = [i for i, e in enumerate(sweep.epsilons) if float(e) > 0]
    if base == NOISE_REFERENCE or len(nonzero) < 2:
        return SanityCheck("independent_epsilons_consistent", True, "fewer than two non-zero epsilons or no attack: nothing to compare")
    large = survivors_at[-1] if survivors_at else nonzero[0]
    if large == nonzero[0]:
        large = nonzero[1]
    small = nonzero[nonzero.index(large) - 1]
    idx = np.flatnonzero(sweep.correct)[:INDEPENDENT_IMAGES]
    standing = []
    for index in (small, large):
        level = attack_level(
            base, attacker, served, images, labels, clean_logits, float(sweep.epsilons[index]), idx, config,
            epsilon_index=index, seed_key=(99,),
        )
        standing.append(len(idx) - len(level.fooled_idx))
    return independent_check((sweep.epsilons[small], sweep.epsilons[large]), (standing[0], standing[1]), len(idx), base)


def square_attacked(sweep: Sweep, order: Sequence[str]) -> np.ndarray:
    """bool [n]: the images Square attacked at some non-zero epsilon, each once however many epsilons it stood at.

    At each epsilon Square ran (`order` is the ensemble's stages), it attacked every image standing
    then that no stage before it fooled there."""
    before = list(order[: order.index("square")])
    fooled_by = sweep.fooled_by if sweep.fooled_by is not None else np.full(len(sweep.labels), "")
    attacked = np.zeros(len(sweep.labels), bool)
    for i in sorted({p.epsilon_index for p in sweep.progress if p.attack == "square"}):
        if float(sweep.epsilons[i]) <= 0:
            continue
        fooled_earlier = (sweep.fooled_at != NEVER) & (sweep.fooled_at < i)
        fooled_before_square = (sweep.fooled_at == i) & np.isin(fooled_by, before)
        attacked |= sweep.correct & ~fooled_earlier & ~fooled_before_square
    return attacked


def _ensemble_witness(sweep: Sweep, order: Sequence[str]) -> SanityCheck:
    """In the ensemble Square attacks only what APGD-CE and APGD-T left standing: each image it fools is one they missed."""
    witnessed = int(square_attacked(sweep, order).sum())
    if not witnessed:
        return black_box_check(0, 0, None, "")
    fooled = sweep.fooled_by == "square" if sweep.fooled_by is not None else np.zeros(len(sweep.labels), bool)
    where = sorted({sweep.epsilons[i] for i in sweep.fooled_at[fooled]}, key=float)
    return black_box_check(int(fooled.sum()), witnessed, ", ".join(where) or "any epsilon of the grid", "the ensemble")


def _witness(
    attacker: Attacker, sweep: Sweep, images: np.ndarray, labels: np.ndarray, clean_logits: np.ndarray, config: AttackConfig,
    survivors_at: list[int],
) -> SanityCheck:
    """Square with a small budget on the survivors at the largest epsilon where any survive."""
    if not survivors_at:
        return black_box_check(0, 0, None, "")
    index = survivors_at[-1]
    idx = np.flatnonzero(sweep.robust_mask(index))[:WITNESS_IMAGES]
    budget = min(config.queries, WITNESS_QUERIES, WITNESS_QUERIES_PER_STEP * config.iterations)
    witness = replace(config.for_attack("square"), queries=budget, restarts=1)
    level = attack_level(
        "square", Attacker(attacker.served, witness), attacker.served, images, labels, clean_logits,
        float(sweep.epsilons[index]), idx, witness, epsilon_index=index, seed_key=(98,),
    )
    return black_box_check(len(level.fooled_idx), len(idx), sweep.epsilons[index], f"Square witness, {witness.queries} queries")


def _progress(served: ServedModel, sweep: Sweep, images: np.ndarray, labels: np.ndarray, attack: str | None) -> SanityCheck:
    """Compare each survivor's margin fall with eps x |margin gradient|_1 at its clean image."""
    if attack is None:
        return SanityCheck("attack_made_progress", True, "a query-only attack: no gradient promise to compare with")
    records = [p for p in sweep.progress if not attack_spec(p.attack).gradient_free and float(sweep.epsilons[p.epsilon_index]) > 0]
    if not records:
        return progress_check(np.zeros(0), np.zeros(0), None, attack)
    first = min(p.epsilon_index for p in records)
    # The first attack's first pass at that epsilon covers the images standing there, batch by batch, in order.
    attacked = np.flatnonzero(sweep.correct & ((sweep.fooled_at == NEVER) | (sweep.fooled_at >= first)))
    at, total = [], 0
    for p in records:
        if p.epsilon_index == first and p.attack == records[0].attack and total < len(attacked):
            at.append(p)
            total += len(p.start)
    start = np.concatenate([p.start for p in at])
    end = np.concatenate([p.end for p in at])
    survived = np.concatenate([p.survived for p in at])
    keep = np.flatnonzero(survived)[:PROBE_IMAGES]
    if len(keep) == 0:
        return progress_check(np.zeros(0), np.zeros(0), None, attack)
    norms, _ = margin_gradient_norms(served, images[attacked[keep]], labels[attacked[keep]])
    epsilon = float(sweep.epsilons[first])
    promised = np.nan_to_num(norms, nan=0.0) * epsilon
    return progress_check((start[keep] - end[keep]).astype(np.float64), promised, sweep.epsilons[first], attack)
