"""The nested-epsilon sweep: attack only the images still standing, verify every example as served.

An image fooled at one epsilon is fooled at every larger one (its adversarial example lies inside
the larger ball), so each epsilon attacks only the images that survived the previous one. Every
candidate is checked through `serving_default`: inside the ball (distance <= epsilon + 1e-6), inside
[0, 1], and misclassified. The counts come from those served predictions alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.attacks import build_attack, distance, is_random, run_attack
from audit.config import AttackConfig
from audit.foolbox_model import ServedModel, foolbox_model

BALL_TOLERANCE = 1e-6
NEVER = -1


@dataclass(frozen=True)
class Sweep:
    """Per-image and per-epsilon outcomes of one attack over the grid."""

    epsilons: tuple[str, ...]
    labels: np.ndarray  # int64 [n]
    clean_class: np.ndarray  # int64 [n], served
    fooled_at: np.ndarray  # int64 [n]: index into epsilons of the smallest that fools; NEVER; clean misses: 0
    adversarial: np.ndarray  # float32 [n, H, W, 3]: the verified example for fooled images, else the clean image
    adversarial_class: np.ndarray  # int64 [n]
    attacked: tuple[int, ...]  # per epsilon: images attacked
    fooled: tuple[int, ...]  # per epsilon: images newly fooled (verified)
    rejected: int  # candidates outside the ball or [0, 1] (an attack bug if ever non-zero)
    noise_fooled_at: np.ndarray | None  # the same for the uniform-noise reference, or None

    @property
    def correct(self) -> np.ndarray:
        return self.clean_class == self.labels

    def robust_mask(self, index: int) -> np.ndarray:
        """Images still classified correctly at epsilon number `index`."""
        return _standing(self.correct, self.fooled_at, index)

    def noise_robust_mask(self, index: int) -> np.ndarray | None:
        if self.noise_fooled_at is None:
            return None
        return _standing(self.correct, self.noise_fooled_at, index)


def _standing(correct: np.ndarray, fooled_at: np.ndarray, index: int) -> np.ndarray:
    return correct & ((fooled_at == NEVER) | (fooled_at > index))


def _attack_level(
    name: str, attack, fmodel, served: ServedModel, images, labels, epsilon: float, idx: np.ndarray,
    config: AttackConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Attack images `idx` at one epsilon with restarts; returns (fooled idx, their examples, classes, rejected)."""
    fooled_idx, examples, classes = [], [], []
    rejected = 0
    remaining = idx
    for _ in range(config.restarts if is_random(name, config) else 1):
        still = []
        for start in range(0, len(remaining), config.batch_size):
            batch = remaining[start : start + config.batch_size]
            x, y = images[batch], labels[batch]
            if epsilon == 0.0:
                candidate = x  # the ball is one point: the served prediction of the image itself
            else:
                candidate = run_attack(attack, fmodel, x, y, epsilon)
            inside = distance(name, candidate, x) <= epsilon + BALL_TOLERANCE
            in_range = (candidate.reshape(len(batch), -1).min(axis=1) >= 0.0) & (
                candidate.reshape(len(batch), -1).max(axis=1) <= 1.0
            )
            valid = inside & in_range
            rejected += int((~valid).sum())
            predicted = served.classes(candidate)
            hit = valid & (predicted != y)
            fooled_idx.append(batch[hit])
            examples.append(candidate[hit])
            classes.append(predicted[hit])
            still.append(batch[~hit])
        remaining = np.concatenate(still) if still else remaining[:0]
        if len(remaining) == 0:
            break
    if fooled_idx:
        return np.concatenate(fooled_idx), np.concatenate(examples), np.concatenate(classes), rejected
    return idx[:0], images[:0], labels[:0], rejected


def nested_sweep(
    name: str,
    fmodel,
    served: ServedModel,
    images: np.ndarray,
    labels: np.ndarray,
    clean_class: np.ndarray,
    config: AttackConfig,
    *,
    progress: bool = False,
    description: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int], int]:
    """One attack over the grid, nested; returns fooled_at, adversarial, adversarial_class, attacked, fooled, rejected."""
    from tqdm import tqdm

    attack = build_attack(name, config)
    correct = clean_class == labels
    n = len(labels)
    fooled_at = np.where(correct, NEVER, 0).astype(np.int64)
    adversarial = images.copy()
    adversarial_class = clean_class.copy()
    attacked, fooled = [], []
    rejected = 0
    bar = tqdm(
        list(enumerate(config.epsilon_values)), desc=description or name, unit="eps", disable=not progress, leave=False,
    )
    for index, epsilon in bar:
        idx = np.flatnonzero(correct & (fooled_at == NEVER))
        bar.set_postfix(eps=config.epsilons[index], standing=f"{len(idx)}/{n}")
        attacked.append(len(idx))
        if len(idx) == 0:
            fooled.append(0)
            continue
        hit, examples, classes, bad = _attack_level(name, attack, fmodel, served, images, labels, epsilon, idx, config)
        rejected += bad
        fooled_at[hit] = index
        adversarial[hit] = examples
        adversarial_class[hit] = classes
        fooled.append(len(hit))
    bar.close()
    return fooled_at, adversarial, adversarial_class, attacked, fooled, rejected


def run_sweep(
    served: ServedModel, images: np.ndarray, labels: np.ndarray, config: AttackConfig, *, progress: bool = False
) -> Sweep:
    """The configured attack over the grid, plus the uniform-noise reference unless disabled."""
    labels = np.asarray(labels, np.int64)
    images = np.asarray(images, np.float32)
    clean_class = served.classes(images)
    fmodel = foolbox_model(served)
    fooled_at, adversarial, adversarial_class, attacked, fooled, rejected = nested_sweep(
        config.attack, fmodel, served, images, labels, clean_class, config, progress=progress,
        description=f"{served.model} v{served.version} {config.attack}",
    )
    noise_fooled_at = None
    if config.noise_check and config.attack != "uniform_noise":
        noise_fooled_at, *_ = nested_sweep(
            "uniform_noise", fmodel, served, images, labels, clean_class, config, progress=progress,
            description=f"{served.model} v{served.version} noise reference",
        )
    return Sweep(
        epsilons=config.epsilons, labels=labels, clean_class=clean_class, fooled_at=fooled_at,
        adversarial=adversarial, adversarial_class=adversarial_class, attacked=tuple(attacked),
        fooled=tuple(fooled), rejected=rejected, noise_fooled_at=noise_fooled_at,
    )
