"""The attacks run through Foolbox 3 on the served model: L-infinity and L2 PGD, and FGSM."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from audit.attack_base import Candidates, SingleAttack, Target
from training.contract.attacks import ATTACKS, AttackSpec

if TYPE_CHECKING:
    from foolbox.attacks.base import FixedEpsilonAttack


class _FoolboxAttack(SingleAttack):
    # Whether the first fooling iterate is kept (with the margin curve) rather than Foolbox's last one.
    tracked: ClassVar[bool] = False

    @abstractmethod
    def build(self) -> FixedEpsilonAttack:
        """The Foolbox attack object."""

    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        import tensorflow as tf

        fmodel = target.foolbox()
        attack = self.build()
        x = tf.convert_to_tensor(images, tf.float32)
        # EagerPy under NumPy 2 fails comparing tensors of different dtypes: class ids must be int64 like argmax's.
        y = tf.convert_to_tensor(labels, tf.int64)
        if self.tracked:
            target.recorder.reset(images, labels, epsilon)
        out = attack.run(fmodel, x, y, epsilon=float(epsilon))
        final = np.asarray(out.numpy() if hasattr(out, "numpy") else out, np.float32)
        if not self.tracked:
            return Candidates(final, None)
        best, margins = target.recorder.finish(final)
        return Candidates(best, margins)


class LinfPGD(_FoolboxAttack):
    """L-infinity PGD (Madry et al.), the paper's protocol: steps x step size = step_ratio x epsilon."""

    spec: ClassVar[AttackSpec] = ATTACKS["linf_pgd"]
    tracked = True

    def build(self) -> FixedEpsilonAttack:
        import foolbox as fb

        steps = int(self.budget["steps"])
        return fb.attacks.LinfPGD(
            rel_stepsize=float(self.budget["step_ratio"]) / steps, steps=steps, random_start=bool(self.budget["random_start"])
        )


class L2PGD(_FoolboxAttack):
    """PGD in the L2 norm (epsilon an L2 radius over all pixels)."""

    spec: ClassVar[AttackSpec] = ATTACKS["l2_pgd"]

    def build(self) -> FixedEpsilonAttack:
        import foolbox as fb

        steps = int(self.budget["steps"])
        return fb.attacks.L2PGD(
            rel_stepsize=float(self.budget["step_ratio"]) / steps, steps=steps, random_start=bool(self.budget["random_start"])
        )


class FGSM(_FoolboxAttack):
    """One signed-gradient step of size epsilon, from the clean image."""

    spec: ClassVar[AttackSpec] = ATTACKS["fgsm"]
    tracked = True

    def build(self) -> FixedEpsilonAttack:
        import foolbox as fb

        return fb.attacks.FGSM(random_start=False)
