"""The attacks an audit can run, as Foolbox 3 attacks configured with the paper's protocol.

L-infinity PGD is the paper's and the default; FGSM and L2 PGD are alternatives; additive uniform
noise at the same epsilon is the non-gradient reference the sanity checks compare against.
"""

from __future__ import annotations

import numpy as np

from audit.config import AttackConfig

NORMS = {"linf_pgd": "linf", "fgsm": "linf", "uniform_noise": "linf", "l2_pgd": "l2"}


def build_attack(name: str, config: AttackConfig):
    """The Foolbox attack called `name`, with steps x step size = step_ratio x epsilon."""
    import foolbox as fb

    rel_step = config.step_ratio / config.steps
    if name == "linf_pgd":
        return fb.attacks.LinfPGD(rel_stepsize=rel_step, steps=config.steps, random_start=config.random_start)
    if name == "l2_pgd":
        return fb.attacks.L2PGD(rel_stepsize=rel_step, steps=config.steps, random_start=config.random_start)
    if name == "fgsm":
        return fb.attacks.FGSM(random_start=False)
    if name == "uniform_noise":
        return UniformNoise()
    raise ValueError(f"expected an attack in {tuple(NORMS)}, got {name!r}")


class UniformNoise:
    """x + U(-epsilon, epsilon) per pixel, clipped to [0, 1].

    Not Foolbox's LinfAdditiveUniformNoiseAttack: it scales the noise by its maximum rather than
    its maximum magnitude, so its examples can leave the L-infinity ball (the audit's checks caught it).
    """

    def run(self, model, inputs, criterion=None, *, epsilon: float):
        import tensorflow as tf

        noise = tf.random.uniform(tf.shape(inputs), -epsilon, epsilon, dtype=inputs.dtype)
        return tf.clip_by_value(inputs + noise, 0.0, 1.0)


def is_random(name: str, config: AttackConfig) -> bool:
    """Whether another restart can find something the first did not."""
    return name == "uniform_noise" or (name in ("linf_pgd", "l2_pgd") and config.random_start)


def run_attack(attack, fmodel, images: np.ndarray, labels: np.ndarray, epsilon: float) -> np.ndarray:
    """Adversarial candidates for `images` at `epsilon` (not yet verified)."""
    import tensorflow as tf

    x = tf.convert_to_tensor(images, tf.float32)
    # EagerPy under NumPy 2 fails comparing tensors of different dtypes: class ids must be int64 like argmax's.
    y = tf.convert_to_tensor(np.asarray(labels, np.int64), tf.int64)
    out = attack.run(fmodel, x, y, epsilon=float(epsilon))
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out, np.float32)


def distance(name: str, adversarial: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per-image distance in the attack's norm (L-infinity or L2 over all pixels)."""
    diff = (adversarial.astype(np.float64) - clean.astype(np.float64)).reshape(len(clean), -1)
    if NORMS[name] == "l2":
        return np.sqrt((diff**2).sum(axis=1))
    return np.abs(diff).max(axis=1) if diff.size else np.zeros(len(clean))
