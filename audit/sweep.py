"""The nested-epsilon sweep: attack only the images still standing, verify every example as served.

An image fooled at one epsilon is fooled at every larger one (its adversarial example lies inside
the larger ball), so each epsilon attacks only the images that survived the previous one. The
ensemble runs its attacks in turn at each epsilon, each on the images the previous left standing.
Every candidate is checked through `serving_default`: inside the ball (distance <= epsilon + 1e-6),
inside [0, 1], and misclassified. The counts come from those served predictions alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audit.attacks import Attacker, distance, is_random, stages
from training.contract.attacks import NOISE_REFERENCE
from training.contract.config import AttackConfig
from audit.foolbox_model import ServedModel

BALL_TOLERANCE = 1e-6
NEVER = -1


@dataclass(frozen=True)
class StageProgress:
    """How one attack's margins moved at one epsilon: the evidence for `attack_made_progress`."""

    epsilon_index: int
    attack: str
    start: np.ndarray  # float32 [m]: true-class margin of each attacked image at the attack's start point
    end: np.ndarray  # float32 [m]: the lowest margin the attack reached
    survived: np.ndarray  # bool [m]: still standing after verification


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
    fooled_by: np.ndarray | None = None  # str [n]: the attack whose example fooled the image ("" when none did)
    progress: tuple[StageProgress, ...] = ()
    stages: tuple[str, ...] = ()  # the attacks run in turn at each epsilon, by their real names

    @property
    def correct(self) -> np.ndarray:
        correct: np.ndarray = self.clean_class == self.labels
        return correct

    def robust_mask(self, index: int) -> np.ndarray:
        """Images still classified correctly at epsilon number `index`."""
        return _standing(self.correct, self.fooled_at, index)

    def noise_robust_mask(self, index: int) -> np.ndarray | None:
        if self.noise_fooled_at is None:
            return None
        return _standing(self.correct, self.noise_fooled_at, index)

    def fooled_by_counts(self) -> dict[str, int]:
        """Attack name -> images whose verified example it found (epsilon > 0)."""
        if self.fooled_by is None:
            return {}
        names, counts = np.unique(self.fooled_by[self.fooled_by != ""], return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}


def _standing(correct: np.ndarray, fooled_at: np.ndarray, index: int) -> np.ndarray:
    standing: np.ndarray = correct & ((fooled_at == NEVER) | (fooled_at > index))
    return standing


@dataclass(frozen=True)
class Level:
    """One attack at one epsilon over some images: which were fooled (verified), and with what."""

    fooled_idx: np.ndarray
    examples: np.ndarray
    classes: np.ndarray
    rejected: int
    progress: tuple[StageProgress, ...]


def attack_level(
    name: str, attacker: Attacker, served: ServedModel, images: np.ndarray, labels: np.ndarray,
    clean_logits: np.ndarray, epsilon: float, idx: np.ndarray, config: AttackConfig, *, epsilon_index: int,
    seed_key: tuple[int, ...] = (), tick: Callable[[int], None] | None = None,
) -> Level:
    """Attack images `idx` at one epsilon with restarts, each candidate verified through `serving_default`.

    `tick(images)` is called after every batch (the images of the first restart count; later ones
    count 0): the caller's progress and its checkpoint, which may raise to stop the attack."""
    fooled_idx, examples, classes, progress = [], [], [], []
    rejected = 0
    remaining = idx
    for restart in range(config.restarts if is_random(name, config) else 1):
        still = []
        for start in range(0, len(remaining), config.batch_size):
            batch = remaining[start : start + config.batch_size]
            x, y = images[batch], labels[batch]
            rng = np.random.default_rng([config.seed, *seed_key, epsilon_index, restart, start])
            found = attacker(name, x, y, epsilon, clean_logits[batch], rng)
            candidate = found.adversarial
            inside = distance(name, candidate, x) <= epsilon + BALL_TOLERANCE
            flat = candidate.reshape(len(batch), -1)
            valid = inside & (flat.min(axis=1) >= 0.0) & (flat.max(axis=1) <= 1.0)
            rejected += int((~valid).sum())
            predicted = served.classes(candidate)
            hit = valid & (predicted != y)
            if found.margins is not None and len(found.margins):
                progress.append(StageProgress(epsilon_index, name, found.margins[0], found.margins[-1], ~hit))
            fooled_idx.append(batch[hit])
            examples.append(candidate[hit])
            classes.append(predicted[hit])
            still.append(batch[~hit])
            if tick is not None:
                tick(len(batch) if restart == 0 else 0)
        remaining = np.concatenate(still) if still else remaining[:0]
        if len(remaining) == 0:
            break
    if fooled_idx:
        return Level(np.concatenate(fooled_idx), np.concatenate(examples), np.concatenate(classes), rejected, tuple(progress))
    return Level(idx[:0], images[:0], labels[:0], rejected, ())


def nested_sweep(
    name: str,
    attacker: Attacker,
    served: ServedModel,
    images: np.ndarray,
    labels: np.ndarray,
    clean_logits: np.ndarray,
    clean_class: np.ndarray,
    config: AttackConfig,
    *,
    progress: bool = False,
    description: str = "",
    tick: Callable[[int], None] | None = None,
) -> Sweep:
    """One attack (or the ensemble's attacks in turn) over the grid, nested; `tick` counts the
    images done at each epsilon (those not attacked at once, the attacked as their batches end)."""
    from tqdm import tqdm

    correct = clean_class == labels
    n = len(labels)
    fooled_at = np.where(correct, NEVER, 0).astype(np.int64)
    adversarial = images.copy()
    adversarial_class = clean_class.copy()
    fooled_by = np.full(n, "", dtype=object)
    attacked: list[int] = []
    fooled: list[int] = []
    margins: list[StageProgress] = []
    rejected = 0
    run_stages = stages(name, clean_logits.shape[1])
    bar = tqdm(
        list(enumerate(config.epsilon_values)), desc=description or name, unit="eps",
        # None: tqdm's own test, a bar only on a terminal. In a log file (a container, `up` in the
        # background) carriage-return updates of concurrent audits would interleave into noise.
        disable=None if progress else True, leave=False,
    )
    for index, epsilon in bar:
        idx = np.flatnonzero(correct & (fooled_at == NEVER))
        bar.set_postfix(eps=config.epsilons[index], standing=f"{len(idx)}/{n}")
        attacked.append(len(idx))
        if tick is not None:
            tick(n - len(idx))
        newly = 0
        for stage_number, stage in enumerate(run_stages):
            if len(idx) == 0:
                break
            level = attack_level(
                stage, attacker, served, images, labels, clean_logits, epsilon, idx, config,
                epsilon_index=index, seed_key=(stage_number,),
                tick=None if tick is None else tick if stage_number == 0 else lambda _images: tick(0),
            )
            rejected += level.rejected
            margins.extend(level.progress)
            fooled_at[level.fooled_idx] = index
            adversarial[level.fooled_idx] = level.examples
            adversarial_class[level.fooled_idx] = level.classes
            if epsilon > 0:
                fooled_by[level.fooled_idx] = stage
            newly += len(level.fooled_idx)
            idx = np.setdiff1d(idx, level.fooled_idx)
        fooled.append(newly)
    bar.close()
    return Sweep(
        epsilons=config.epsilons, labels=labels, clean_class=clean_class, fooled_at=fooled_at, adversarial=adversarial,
        adversarial_class=adversarial_class, attacked=tuple(attacked), fooled=tuple(fooled), rejected=rejected,
        noise_fooled_at=None, fooled_by=fooled_by, progress=tuple(margins), stages=run_stages,
    )


def sweep_work(images: int, config: AttackConfig) -> int:
    """Images x epsilons a sweep goes through: the attack's grid, and the noise reference's when on."""
    passes = 2 if config.noise_check and config.attack != "uniform_noise" else 1
    return images * len(config.epsilons) * passes


def run_sweep(
    served: ServedModel, images: np.ndarray, labels: np.ndarray, config: AttackConfig, *, progress: bool = False,
    attacker: Attacker | None = None, tick: Callable[[int], None] | None = None,
) -> Sweep:
    """The configured attack over the grid, plus the uniform-noise reference unless disabled;
    `tick` counts `sweep_work(len(images), config)` images x epsilons in all."""
    import tensorflow as tf

    tf.random.set_seed(config.seed)  # Foolbox's random starts and the noise reference draw from TensorFlow
    labels = np.asarray(labels, np.int64)
    images = np.asarray(images, np.float32)
    clean_logits = served.logits(images)
    clean_class = served.classes(images)  # as the server reports them
    attacker = Attacker(served, config) if attacker is None else attacker
    sweep = nested_sweep(
        config.attack, attacker, served, images, labels, clean_logits, clean_class, config, progress=progress,
        description=f"{served.model} v{served.version} {config.attack}", tick=tick,
    )
    if config.noise_check and config.attack != NOISE_REFERENCE:
        noise = nested_sweep(
            NOISE_REFERENCE, attacker, served, images, labels, clean_logits, clean_class, config, progress=progress,
            description=f"{served.model} v{served.version} noise reference", tick=tick,
        )
        sweep = Sweep(**{**sweep.__dict__, "noise_fooled_at": noise.fooled_at})
    return sweep
