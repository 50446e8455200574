"""Tiny trained classifiers served as the attacks see them (numpy callables over the two signatures),
and recorders of what an attack sent: shared by the APGD and Square tests and the comparison with ART."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

SIZE = 32
TINTS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)  # class c tints the image with TINTS[c]


def tinted_images(classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images, each tinted by its class's colour at a random strength (so robustness varies per image)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    strength = rng.uniform(0.03, 0.2, n).astype(np.float32)
    noise = rng.uniform(0.3, 0.7, (n, SIZE, SIZE, 3)).astype(np.float32)
    return np.clip(noise + strength[:, None, None, None] * TINTS[labels][:, None, None, :], 0, 1), labels


def tiny_classifier(classes: int):
    """A small conv net (logits out) trained for a few seconds on tinted images, seeded."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.AveragePooling2D(2),  # the classes differ in colour: a 16x16 view is enough and 4x cheaper
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tinted_images(classes, 256, seed=0)
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return model


def served(model, classes: int):
    """The two served signatures over a Keras model: (logits_and_gradient, logits), numpy in and out."""
    import tensorflow as tf

    image = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)

    @tf.function(input_signature=[image, tf.TensorSpec([None, classes], tf.float32)])
    def vjp(x, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)
        return logits, tape.gradient(logits, x, output_gradients=cotangent)

    @tf.function(input_signature=[image])
    def forward(x):
        return model(x, training=False)

    def logits_and_gradient(x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, gradient = vjp(x, cotangent)
        return logits.numpy(), gradient.numpy()

    return logits_and_gradient, lambda x: forward(x).numpy()


class Visit(NamedTuple):
    call: int
    point: np.ndarray
    logits: np.ndarray
    cotangent: np.ndarray | None


class Recorder:
    """Wraps a served callable and keeps every call's inputs and outputs."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple[tuple[np.ndarray, ...], object]] = []

    def __call__(self, *args):
        out = self.fn(*args)
        self.calls.append((tuple(np.array(a) for a in args), out))
        return out

    def visits(self, images: np.ndarray, eps: float) -> list[list[Visit]]:
        """Per image, the calls that sent a point of its eps-ball (the images are far apart), in order."""
        out: list[list[Visit]] = [[] for _ in images]
        for c, (args, result) in enumerate(self.calls):
            logits = result[0] if isinstance(result, tuple) else result
            distance = np.abs(args[0][:, None] - images[None]).max(axis=(2, 3, 4))
            near = np.sort(distance, axis=1)
            assert (near[:, 0] <= eps + 1e-6).all() and (near[:, 1] > eps + 1e-6).all(), "each point in one ball"
            for row, i in enumerate(distance.argmin(axis=1)):
                cotangent = args[1][row] if len(args) > 1 else None
                out[i].append(Visit(c, args[0][row], np.asarray(logits)[row], cotangent))
        return out


def assert_first_fooling_point_kept(run, visits: list[list[Visit]], images, labels, clean_logits) -> None:
    """Each image is in every call until the model misclassifies it, then in none; that point is its example.

    Images the model misclassifies clean are never sent and come back clean.
    """
    for i, seen in enumerate(visits):
        if clean_logits[i].argmax() != labels[i]:
            assert not seen and run.fooled[i]
            np.testing.assert_array_equal(run.adversarial[i], images[i])
            continue
        assert [v.call for v in seen] == list(range(len(seen))), f"image {i} skipped a call"
        wrong = [v.logits.argmax() != labels[i] for v in seen]
        if run.fooled[i]:
            assert wrong.index(True) == len(seen) - 1, f"image {i} was called on after it was fooled"
            np.testing.assert_array_equal(run.adversarial[i], seen[-1].point)
        else:
            assert not any(wrong)


class Case:
    """A trained tiny model, its served callables and a batch it classifies."""

    def __init__(self, classes: int, n: int = 32):
        self.classes = classes
        self.model = tiny_classifier(classes)
        self.logits_and_gradient, self.logits = served(self.model, classes)
        self.images, self.labels = tinted_images(classes, n, seed=1)
        self.clean_logits = self.logits(self.images)

    def robust(self, adversarial: np.ndarray) -> np.ndarray:
        return self.logits(adversarial).argmax(axis=1) == self.labels


@functools.cache
def case(classes: int) -> Case:
    """One trained Case per class count for the whole test process (training takes a few seconds)."""
    return Case(classes)


EPSILON = 0.02  # the tiny models are partly, not fully, fooled here (checked below)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
