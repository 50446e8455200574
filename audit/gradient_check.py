"""Is the served gradient the served forward's? Finite differences through `serving_default` against `vjp`.

Every white-box attack trusts `vjp`: if it returns something other than the gradient of what
`serving_default` computes (a non-differentiable step with a wrong surrogate, a `vjp` exported from
another graph, a gradient scaled to nothing), the attack walks the wrong way and the model looks
robust while every later check can pass. So, before attacking, on a few correctly classified
images: the derivative of the true-class margin (true logit minus the runner-up's, the pair fixed
at the probed point) along a direction d, by central finite difference through the forward,

    (m(x + h d) - m(x - h d)) / 2h,

must agree with g . d, g the margin gradient `vjp` returns at x. The directions are the sign of g
(where the attacks step: the derivative promised there is |g|_1, the margin's fall per unit of
L-infinity epsilon) and a few random sign vectors (a gradient right only along its own sign is
still a lie). Central differences cancel the second-order term, so a smooth model agrees to a few
percent; a ReLU network's error grows with h, from the kinks x +- h d crosses (the tiny ResNet-50s
of the tests, 64 px: 0.05 of the derivative at h = 1e-3, 0.006 at h = 1e-4), so h is 1e-4, a
fortieth of a grey level; float32 noise is still far below the derivatives there. Derivatives
under the float32 noise floor of the forward's logits count as agreeing: a flat model has nothing
to lie about.

AutoAttack's randomised-forward check sits here too: two forward calls on the same images must
agree, or no attack (and no finite difference) measures anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audit.foolbox_model import ServedModel
from audit.results import GRADIENT_CHECK, SanityCheck
from training.contract.attacks import ATTACKS, attack_names, attack_spec

STEP = 1e-4  # h: the L-infinity length of each finite-difference step, in [0, 1] pixel units
RANDOM_DIRECTIONS = 3  # random sign directions per image, beside the served gradient's sign
PROBE_IMAGES = 8
# Probe points are the images moved by up to half a grey level per pixel: anywhere in their 8-bit cell.
JITTER = 0.5 / 255
# Agreement: median relative error |fd - vjp| / (max(|fd|, |vjp|) + floor) at most this, along
# the gradient's sign and along the random directions. An honest model is far inside (a smooth one
# at ~1e-4, the tests' tiny ResNet-50s at <= 0.04, a 224 px ResNet-50 at ~1e-2: 73.4 against 74.0);
# a lying gradient is near 1.
TOLERANCE = 0.2
# The forward may not fall along the served gradient's sign (where vjp promises a rise of |g|_1) on
# more than this share of the probed images.
MAX_FALLING_SHARE = 0.25
# Float32 rounding of a served logit: this many units in the last place of the logits' scale. The
# difference of two margins carries it twice, divided by 2h: the noise floor of a finite difference.
NOISE_ULPS = 16
FLOAT32_EPS = float(np.finfo(np.float32).eps)
# Two forward calls on the same images agree to this share of the logits' scale (0 would refuse a
# server that batches requests differently; a random forward misses by orders of magnitude more).
DETERMINISM_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Agreement:
    """Finite-difference and served directional derivatives compared, per image and direction.

    Column 0 of each array is the direction of the served gradient's sign; the others are random.
    """

    finite_difference: np.ndarray  # float64 [n, 1 + r]
    served: np.ndarray  # float64 [n, 1 + r]
    floor: np.ndarray  # float64 [n]: the finite difference's float32 noise floor

    @property
    def errors(self) -> np.ndarray:
        """|fd - served| / (max(|fd|, |served|) + floor); 0 where both are under the floor."""
        fd, served, floor = self.finite_difference, self.served, self.floor[:, None]
        scale = np.maximum(np.abs(fd), np.abs(served))
        errors: np.ndarray = np.where(scale <= floor, 0.0, np.abs(fd - served) / (scale + floor))
        return errors

    @property
    def falling(self) -> np.ndarray:
        """Images whose forward falls, beyond the noise floor, along the sign of their served gradient."""
        falling: np.ndarray = self.finite_difference[:, 0] < -self.floor
        return falling

    @property
    def gradient_error(self) -> float:
        return float(np.median(self.errors[:, 0])) if len(self.errors) else 0.0

    @property
    def random_error(self) -> float:
        return float(np.median(self.errors[:, 1:])) if self.errors[:, 1:].size else 0.0

    @property
    def passed(self) -> bool:
        finite = bool(np.isfinite(self.finite_difference).all() and np.isfinite(self.served).all())
        return (
            finite and self.gradient_error <= TOLERANCE and self.random_error <= TOLERANCE
            and int(self.falling.sum()) <= MAX_FALLING_SHARE * len(self.falling)
        )


def central_difference(
    value: Callable[[np.ndarray], np.ndarray], points: np.ndarray, directions: np.ndarray, step: float,
) -> np.ndarray:
    """(value(x + h d) - value(x - h d)) / 2h for each point x [n, ...] and its directions d [n, r, ...].

    `value` maps a batch [m, ...] to one number per row; it is called once, on all 2 n r shifted
    points, point-major (x's r forward steps, then its r backward ones), so a served forward takes
    one batched call.
    """
    n, r = directions.shape[:2]
    if points.shape != (n, *directions.shape[2:]):
        raise ValueError(f"expected directions [n, r, ...] for points {list(points.shape)}, got {list(directions.shape)}")
    shifted = np.concatenate([points[:, None] + step * directions, points[:, None] - step * directions], axis=1)
    values = np.asarray(value(shifted.reshape(n * 2 * r, *points.shape[1:]).astype(np.float32)), np.float64)
    values = values.reshape(n, 2, r)
    differences: np.ndarray = (values[:, 0] - values[:, 1]) / (2.0 * step)
    return differences


def compare(
    value: Callable[[np.ndarray], np.ndarray], gradient: np.ndarray, points: np.ndarray, *, scale: np.ndarray,
    rng: np.random.Generator, step: float = STEP, random_directions: int = RANDOM_DIRECTIONS,
) -> Agreement:
    """Directional derivatives of `value` (a batch [2 n r, ...] in the order `central_difference` builds it
    -> one number per row) by finite difference against `gradient` [n, ...] along its sign and random signs.

    `scale` [n] is each point's logit scale, from which the float32 noise floor is set.
    """
    n = len(points)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, random_directions, *points.shape[1:]))
    directions = np.concatenate([np.sign(gradient)[:, None].astype(np.float32), signs], axis=1)
    fd = central_difference(value, points, directions, step)
    pixels = int(np.prod(points.shape[1:]))
    served = (directions.astype(np.float64) * gradient[:, None].astype(np.float64)).reshape(n, 1 + random_directions, pixels)
    floor = NOISE_ULPS * FLOAT32_EPS * np.maximum(np.asarray(scale, np.float64), 1.0) / step
    return Agreement(fd, served.sum(axis=2), floor)


@dataclass(frozen=True)
class GradientConsistency:
    """The served gradient against finite differences of the served forward on a few images."""

    agreement: Agreement
    images: int
    step: float

    @property
    def passed(self) -> bool:
        return self.agreement.passed

    def sanity_check(self, attack: str, replacement: str | None) -> SanityCheck:
        """The GRADIENT_CHECK sanity check: on failure the audit runs `replacement` in place of `attack`
        (None: the norm has no query-only attack, and the audit cannot be run)."""
        a = self.agreement
        if self.images == 0:
            return SanityCheck(GRADIENT_CHECK, True, "no correctly classified image to probe")
        detail = (
            f"margin derivative along the served gradient's sign on {self.images} images, h = {self.step:g}: "
            f"median {float(np.median(a.finite_difference[:, 0])):.4g} by finite difference of serving_default, "
            f"{float(np.median(a.served[:, 0])):.4g} from vjp (median relative error {a.gradient_error:.3g}, "
            f"{a.served.shape[1] - 1} random directions {a.random_error:.3g}, tolerance {TOLERANCE:g}); "
            f"the forward falls where vjp promises a rise on {int(a.falling.sum())} images"
        )
        if not self.passed:
            instead = (
                f"the audit ran {replacement} (query-only) in its place: black-box only" if replacement
                else "no query-only attack of its norm is registered to run in its place"
            )
            detail += f". The served gradient is not the forward's: {attack} was not trusted; {instead}"
        return SanityCheck(GRADIENT_CHECK, self.passed, detail)


def black_box_attack(name: str) -> str | None:
    """The registry's first single query-only attack in the norm of `name` (Square for L-infinity), or None:
    what runs in place of `name` when the served gradient fails its check."""
    norm = attack_spec(name).norm
    found = [a for a in attack_names(norm=norm) if ATTACKS[a].threat_model == "score-based" and not ATTACKS[a].stages]
    return found[0] if found else None


def margin_cotangent(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d(true logit - best other logit)/d logits: unlike cross-entropy it never vanishes when softmax saturates.

    +1 on each row's true class, -1 on its runner-up at these logits."""
    k = logits.shape[1]
    others = np.where(np.eye(k, dtype=bool)[labels], -np.inf, logits)
    cot = np.zeros_like(logits, dtype=np.float32)
    rows = np.arange(len(labels))
    cot[rows, labels] = 1.0
    cot[rows, np.argmax(others, axis=1)] = -1.0
    return cot


def gradient_consistency(
    served: ServedModel, images: np.ndarray, labels: np.ndarray, *, seed: int, probe: int = PROBE_IMAGES,
    step: float = STEP, random_directions: int = RANDOM_DIRECTIONS,
) -> GradientConsistency:
    """Finite differences through `serving_default` against `vjp` near the first `probe` correctly classified images."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng([seed, 97])
    # Probed off the 8-bit grid, where the attacks evaluate gradients too (a random start, every
    # iterate): an input quantiser is flat within half a grey level of a grid point (every image read
    # from a PNG or DICOM lies on it), its zero gradient true there and false at each step between.
    # Inside [h, 1 - h] so every shifted point is a valid image.
    jitter = rng.uniform(-JITTER, JITTER, np.shape(images)).astype(np.float32)
    points = np.clip(np.asarray(images, np.float32) + jitter, step, 1.0 - step)
    picked: list[int] = []
    for start in range(0, len(points), 4 * probe):  # a few batches find them; an audit set is mostly correct
        chunk = np.arange(start, min(start + 4 * probe, len(points)))
        picked.extend(chunk[served.classes(points[chunk]) == labels[chunk]][: probe - len(picked)].tolist())
        if len(picked) >= probe:
            break
    idx = np.asarray(picked, np.int64)
    if len(idx) == 0:
        empty = np.zeros((0, 1 + random_directions))
        return GradientConsistency(Agreement(empty, empty, np.zeros(0)), 0, step)
    x, y = points[idx], labels[idx]
    logits = served.logits(x).astype(np.float64)
    pair = margin_cotangent(logits, y)
    _, gradient = served.logits_and_gradient(x, pair)
    rows = np.repeat(np.arange(len(idx)), 2 * random_directions + 2)  # central_difference's order: point-major

    def margin(shifted: np.ndarray) -> np.ndarray:
        out: np.ndarray = (served.logits(shifted).astype(np.float64) * pair[rows]).sum(axis=1)
        return out

    agreement = compare(
        margin, gradient, x, scale=np.abs(logits).max(axis=1),
        rng=rng, step=step, random_directions=random_directions,
    )
    return GradientConsistency(agreement, len(idx), step)


def forward_deterministic(served: ServedModel, images: np.ndarray) -> SanityCheck:
    """AutoAttack's randomised-forward check: two `serving_default` calls on the same images agree."""
    first, second = served.logits(images), served.logits(images)
    scale = max(float(np.abs(first).max(initial=0.0)), 1e-6)
    diff = float(np.abs(first.astype(np.float64) - second).max(initial=0.0)) / scale
    flipped = int((first.argmax(axis=1) != second.argmax(axis=1)).sum()) if len(first) else 0
    passed = diff <= DETERMINISM_TOLERANCE and flipped == 0
    detail = (
        f"two forward calls on {len(images)} images: largest logit difference {diff:.3g} of the logits' scale "
        f"(tolerance {DETERMINISM_TOLERANCE:g}), {flipped} predictions changed"
    )
    if not passed:
        detail += " (a randomised forward: attacks and their checks measure one draw, not the model; use EOT)"
    return SanityCheck("forward_deterministic", passed, detail)
