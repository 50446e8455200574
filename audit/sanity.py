"""Sanity checks in the spirit of AutoAttack: signs that an attack was broken or gradients masked."""

from __future__ import annotations

import numpy as np

from audit.foolbox_model import ServedModel
from audit.results import EpsilonPoint, SanityCheck
from audit.sweep import Sweep

CHECKS = ("robust_accuracy_monotone", "zero_epsilon_equals_clean", "gradients_nonzero", "noise_not_stronger", "perturbations_bounded")


def margin_cotangent(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d(true logit - best other logit)/d logits: unlike cross-entropy it never vanishes when softmax saturates."""
    k = logits.shape[1]
    others = np.where(np.eye(k, dtype=bool)[labels], -np.inf, logits)
    cot = np.zeros_like(logits, dtype=np.float32)
    rows = np.arange(len(labels))
    cot[rows, labels] = 1.0
    cot[rows, np.argmax(others, axis=1)] = -1.0
    return cot


def gradient_check(served: ServedModel, images: np.ndarray, labels: np.ndarray, *, limit: int = 32) -> SanityCheck:
    """The served gradient of the margin is non-zero and finite for every probed image."""
    x = images[:limit]
    y = np.asarray(labels[:limit], np.int64)
    if len(x) == 0:
        return SanityCheck("gradients_nonzero", True, "no image to probe")
    logits = served.logits(x)
    grads = served.gradient(x, margin_cotangent(logits, y)).reshape(len(x), -1)
    finite = np.isfinite(grads).all(axis=1)
    zero = np.abs(np.where(np.isfinite(grads), grads, 0)).max(axis=1) == 0.0
    bad = int((~finite | zero).sum())
    detail = f"{bad} of {len(x)} images have an all-zero or non-finite input gradient"
    return SanityCheck("gradients_nonzero", bad == 0, detail)


def sanity_checks(
    sweep: Sweep, points: tuple[EpsilonPoint, ...], clean_accuracy: float, gradients: SanityCheck
) -> tuple[SanityCheck, ...]:
    """Every check, passed or not, with a one-line detail."""
    robust = [p.robust_accuracy for p in points]
    rises = [
        f"{points[i].epsilon}->{points[i + 1].epsilon}" for i in range(len(points) - 1) if robust[i + 1] > robust[i] + 1e-12
    ]
    checks = [
        SanityCheck(
            "robust_accuracy_monotone", not rises,
            "robust accuracy never rises with epsilon" if not rises else f"robust accuracy rises at {', '.join(rises)}",
        )
    ]
    zero = [p for p in points if p.epsilon == "0"]
    if zero:
        same = abs(zero[0].robust_accuracy - clean_accuracy) < 1e-12
        checks.append(
            SanityCheck(
                "zero_epsilon_equals_clean", same,
                f"robust accuracy at epsilon 0 is {zero[0].robust_accuracy:.4f}, clean accuracy {clean_accuracy:.4f}",
            )
        )
    else:
        checks.append(SanityCheck("zero_epsilon_equals_clean", True, "epsilon 0 is not on the grid"))
    checks.append(gradients)
    if sweep.noise_fooled_at is not None:
        stronger = [
            f"{p.epsilon} (noise {p.noise_robust_accuracy:.4f} < attack {p.robust_accuracy:.4f})"
            for p in points
            if p.noise_robust_accuracy is not None and p.noise_robust_accuracy < p.robust_accuracy - 1e-12
        ]
        checks.append(
            SanityCheck(
                "noise_not_stronger", not stronger,
                "uniform noise never beats the attack" if not stronger
                else "uniform noise beats the attack (gradient masking suspected) at " + "; ".join(stronger),
            )
        )
    else:
        checks.append(SanityCheck("noise_not_stronger", True, "noise reference not run"))
    checks.append(
        SanityCheck(
            "perturbations_bounded", sweep.rejected == 0,
            f"{sweep.rejected} adversarial candidates fell outside the epsilon ball or [0, 1]",
        )
    )
    return tuple(checks)
