"""The attacks an audit can run, each through the served model's signatures.

L-infinity PGD through Foolbox is the paper's protocol and the default. APGD (cross-entropy, DLR
or its K = 2 stand-in the margin, and targeted) runs the project's own loop over `vjp`; Square is
query-only over `serving_default`; `ensemble` is AutoAttack's standard protocol (APGD-CE, then
APGD-T, then Square on the images still standing). FGSM and L2 PGD are alternatives; additive
uniform noise at the same epsilon is the non-gradient reference the sanity checks compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.apgd import apgd, apgd_targeted
from training.contract.config import AttackConfig
from audit.foolbox_model import IterateRecorder, ServedModel, foolbox_model
from audit.square import square_linf

NORMS = {
    "linf_pgd": "linf", "apgd_ce": "linf", "apgd_dlr": "linf", "apgd_t": "linf", "square": "linf",
    "ensemble": "linf", "fgsm": "linf", "uniform_noise": "linf", "l2_pgd": "l2",
}
ENSEMBLE = ("apgd_ce", "apgd_t", "square")  # AutoAttack's "standard" order: cheap and strong first
GRADIENT_FREE = ("square", "uniform_noise")
_RANDOM = ("uniform_noise", "square", "apgd_ce", "apgd_dlr", "apgd_t")


def stages(name: str) -> tuple[str, ...]:
    """The attacks `name` runs in turn on the images still standing: the ensemble's three, or itself."""
    return ENSEMBLE if name == "ensemble" else (name,)


def is_random(name: str, config: AttackConfig) -> bool:
    """Whether another restart can find something the first did not."""
    return name in _RANDOM or (name in ("linf_pgd", "l2_pgd") and config.random_start)


@dataclass(frozen=True)
class Candidates:
    """Unverified adversarial candidates for a batch, with the attack's margin curve when it has one."""

    adversarial: np.ndarray  # float32 [n, H, W, 3]
    margins: np.ndarray | None  # float32 [rows, n]: lowest true-class margin seen so far, row 0 at the start


class Attacker:
    """Runs any single attack of `ATTACKS` (not the ensemble: see `stages`) on a batch of one served model."""

    def __init__(self, served: ServedModel, config: AttackConfig):
        self.served = served
        self.config = config
        self._foolbox = None
        self._recorder = IterateRecorder()

    def __call__(
        self, name: str, images: np.ndarray, labels: np.ndarray, epsilon: float, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        if epsilon == 0.0:
            return Candidates(images, None)  # the ball is one point: the served prediction of the image itself
        steps = self.config.iterations
        labels = np.asarray(labels, np.int64)
        if name in ("apgd_ce", "apgd_dlr"):
            loss = "ce" if name == "apgd_ce" else ("dlr" if clean_logits.shape[1] >= 3 else "cw")
            run = apgd(self.served.logits_and_gradient, images, labels, epsilon, clean_logits=clean_logits, loss=loss,
                       iterations=steps, rng=rng)
            return Candidates(run.adversarial, run.margins)
        if name == "apgd_t":
            run = apgd_targeted(self.served.logits_and_gradient, images, labels, epsilon, clean_logits=clean_logits,
                                iterations=steps, rng=rng)
            return Candidates(run.adversarial, run.margins)
        if name == "square":
            run = square_linf(self.served.logits, images, labels, epsilon, clean_logits=clean_logits,
                              queries=self.config.queries, rng=rng)
            return Candidates(run.adversarial, run.margins)
        return self._foolbox_attack(name, images, labels, epsilon)

    def _foolbox_attack(self, name: str, images: np.ndarray, labels: np.ndarray, epsilon: float) -> Candidates:
        import tensorflow as tf

        if self._foolbox is None:
            self._foolbox = foolbox_model(self.served, self._recorder)
        attack = build_foolbox_attack(name, self.config)
        x = tf.convert_to_tensor(images, tf.float32)
        # EagerPy under NumPy 2 fails comparing tensors of different dtypes: class ids must be int64 like argmax's.
        y = tf.convert_to_tensor(labels, tf.int64)
        tracked = name in ("linf_pgd", "fgsm")
        if tracked:
            self._recorder.reset(images, labels, epsilon)
        out = attack.run(self._foolbox, x, y, epsilon=float(epsilon))
        final = np.asarray(out.numpy() if hasattr(out, "numpy") else out, np.float32)
        if not tracked:
            return Candidates(final, None)
        best, margins = self._recorder.finish(final)
        return Candidates(best, margins)


def build_foolbox_attack(name: str, config: AttackConfig):
    """The Foolbox attack called `name`, with steps x step size = step_ratio x epsilon."""
    import foolbox as fb

    rel_step = config.step_ratio / config.iterations
    if name == "linf_pgd":
        return fb.attacks.LinfPGD(rel_stepsize=rel_step, steps=config.iterations, random_start=config.random_start)
    if name == "l2_pgd":
        return fb.attacks.L2PGD(rel_stepsize=rel_step, steps=config.iterations, random_start=config.random_start)
    if name == "fgsm":
        return fb.attacks.FGSM(random_start=False)
    if name == "uniform_noise":
        return UniformNoise()
    raise ValueError(f"expected a Foolbox attack in ('linf_pgd', 'l2_pgd', 'fgsm', 'uniform_noise'), got {name!r}")


class UniformNoise:
    """x + U(-epsilon, epsilon) per pixel, clipped to [0, 1].

    Not Foolbox's LinfAdditiveUniformNoiseAttack: it scales the noise by its maximum rather than
    its maximum magnitude, so its examples can leave the L-infinity ball (the audit's checks caught it).
    """

    def run(self, model, inputs, criterion=None, *, epsilon: float):
        import tensorflow as tf

        noise = tf.random.uniform(tf.shape(inputs), -epsilon, epsilon, dtype=inputs.dtype)
        return tf.clip_by_value(inputs + noise, 0.0, 1.0)


def distance(name: str, adversarial: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per-image distance in the attack's norm (L-infinity or L2 over all pixels)."""
    diff = (adversarial.astype(np.float64) - clean.astype(np.float64)).reshape(len(clean), -1)
    if NORMS[name] == "l2":
        return np.sqrt((diff**2).sum(axis=1))
    return np.abs(diff).max(axis=1) if diff.size else np.zeros(len(clean))
