"""The ensemble's stages as the sweep runs them: AutoAttack's four in order, and for K = 2 a second APGD start for APGD-T."""

from __future__ import annotations

import numpy as np
import pytest

from audit.attack_base import Candidates
from audit.sweep import nested_sweep
from training.contract.config import AttackConfig


class _Served:
    """Predictions of a served model whose class flips on images an attack marked (pixel [0, 0, 0] = 1)."""

    def __init__(self, classes: int):
        self.k = classes

    def classes(self, images: np.ndarray) -> np.ndarray:
        marked = images[:, 0, 0, 0] == 1.0
        return np.where(marked, (self._label_of(images) + 1) % self.k, self._label_of(images))

    def _label_of(self, images: np.ndarray) -> np.ndarray:
        return np.rint(images[:, 1, 1, 0] * 10).astype(np.int64)  # the label is written in the image


class _Attacker:
    """Records the stages it is asked for; the stage `fools` marks the images it is given (inside the ball)."""

    def __init__(self, fools: str):
        self.fools, self.asked = fools, []

    def __call__(self, name, images, labels, epsilon, clean_logits, rng):
        self.asked.append(name)
        out = images.copy()
        if name == self.fools:
            out[:, 0, 0, 0] = np.minimum(1.0, images[:, 0, 0, 0] + epsilon) if epsilon >= 0.5 else out[:, 0, 0, 0]
        return Candidates(out, None)


@pytest.mark.parametrize(("classes", "second"), [(2, "apgd_dlr"), (3, "apgd_t"), (7, "apgd_t")])
def test_the_sweep_runs_the_four_stages_and_names_what_fooled(classes, second):
    n = 4
    labels = np.arange(n) % classes
    images = np.full((n, 4, 4, 3), 0.5, np.float32)
    images[:, 1, 1, 0] = labels / 10
    clean_logits = np.eye(classes, dtype=np.float32)[labels]
    attacker = _Attacker(fools=second)
    config = AttackConfig(attack="ensemble", epsilons=("0", "0.5"), batch_size=n, noise_check=False)
    sweep = nested_sweep("ensemble", attacker, _Served(classes), images, labels, clean_logits, labels, config)
    assert sweep.stages == ("apgd_ce", second, "fab_t", "square")
    # At epsilon 0.5: APGD-CE finds nothing, the second stage fools every image, the later stages get none.
    assert attacker.asked[-2:] == ["apgd_ce", second]
    assert sweep.fooled_by_counts() == {second: n}
