"""Additive uniform noise at the attack's epsilon: the non-gradient reference the sanity checks compare against."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from audit.attack_base import Candidates, SingleAttack, Target
from training.contract.attacks import ATTACKS, AttackSpec


class UniformNoise(SingleAttack):
    """x + U(-epsilon, epsilon) per pixel, clipped to [0, 1].

    Not Foolbox's LinfAdditiveUniformNoiseAttack: it scales the noise by its maximum rather than
    its maximum magnitude, so its examples can leave the L-infinity ball (the audit's checks caught it).
    Drawn from TensorFlow's generator, which the sweep seeds.
    """

    spec: ClassVar[AttackSpec] = ATTACKS["uniform_noise"]

    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        import tensorflow as tf

        x = tf.convert_to_tensor(images, tf.float32)
        noise = tf.random.uniform(tf.shape(x), -epsilon, epsilon, dtype=x.dtype)
        return Candidates(np.asarray(tf.clip_by_value(x + noise, 0.0, 1.0).numpy(), np.float32), None)
