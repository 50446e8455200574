"""A small model defined in numpy, the same in TensorFlow and torch, and the reference FAB-T's figures on it.

The model is a seeded two-layer ReLU MLP (8x8x3 -> 32 -> 4 logits) over images in NHWC order, both
frameworks flattening the same way, so FAB's flattened coordinates are the same in both. The test
(tests/unit/test_fab.py) runs the project's FAB-T on the TensorFlow copy through a `vjp`-shaped callable
and compares with `tests/unit/fab_reference.json`, which this module's `main` wrote by running the
reference implementation on the torch copy:

    reference: fra31/auto-attack at a39220048b3c9f2cca9a4d3a54604793c68eca7e, files autoattack/*.py
               copied to /tmp/aa/autoattack (the repository's model_test.pt is not needed)
    torch:     2.14.1 (CPU), from PyPI; not a project dependency
    command:   PYTHONPATH=$PWD:/tmp/aa python -m tests.fab_reference tests/unit/fab_reference.json

with FABAttack_PT(predict, norm="Linf", n_restarts=1, n_iter=100, eps=eps, alpha_max=0.1, eta=1.05,
beta=0.9, targeted=True, n_target_classes=3, seed=0): AutoAttack's standard FAB-T, whose
n_target_classes (9) is cut to K - 1 = 3 here as the project's min(9, K-1) does (the reference indexes
past K otherwise). Per epsilon the file holds, per image, whether the reference's example fools the
model within epsilon and its L-infinity size (0 for an image returned clean).
"""

from __future__ import annotations

import json
import sys

import numpy as np

SIDE, HIDDEN, CLASSES, IMAGES = 8, 32, 4, 24
EPSILONS = (0.01, 0.02, 0.04, 0.08)
MISLABELLED = (3, 11)  # images given a label the model does not predict: FAB must leave them alone


def weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(W1 [192, 32], b1 [32], W2 [32, 4], b2 [4]), float32, seeded."""
    rng = np.random.default_rng(2020)
    d = SIDE * SIDE * 3
    w1 = rng.normal(0.0, 1.0 / np.sqrt(d), (d, HIDDEN)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, HIDDEN).astype(np.float32)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), (HIDDEN, CLASSES)).astype(np.float32)
    b2 = rng.normal(0.0, 0.1, CLASSES).astype(np.float32)
    return w1, b1, w2, b2


def logits_numpy(x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = weights()
    hidden = np.maximum(x.reshape(len(x), -1) @ w1 + b1, 0.0)
    out: np.ndarray = hidden @ w2 + b2
    return out


def images_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """Seeded images in [0, 1] (some pixels at 0 or 1, where the box binds) and labels: the model's own
    prediction, but for MISLABELLED."""
    rng = np.random.default_rng(7)
    x = np.clip(rng.uniform(-0.1, 1.1, (IMAGES, SIDE, SIDE, 3)), 0.0, 1.0).astype(np.float32)
    labels = logits_numpy(x).argmax(axis=1).astype(np.int64)
    for i in MISLABELLED:
        labels[i] = (labels[i] + 1) % CLASSES
    return x, labels


def served_tf():
    """The TensorFlow copy as the served signatures: (logits_and_gradient, logits), numpy in and out."""
    import tensorflow as tf

    w1, b1, w2, b2 = (tf.constant(v) for v in weights())

    def model(x):
        hidden = tf.nn.relu(tf.reshape(x, [-1, SIDE * SIDE * 3]) @ w1 + b1)
        return hidden @ w2 + b2

    image = tf.TensorSpec([None, SIDE, SIDE, 3], tf.float32)

    @tf.function(input_signature=[image, tf.TensorSpec([None, CLASSES], tf.float32)])
    def vjp(x, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model(x)
        return out, tape.gradient(out, x, output_gradients=cotangent)

    @tf.function(input_signature=[image])
    def forward(x):
        return model(x)

    def logits_and_gradient(x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, gradient = vjp(x, cotangent)
        return out.numpy(), gradient.numpy()

    return logits_and_gradient, lambda x: forward(x).numpy()


def main(path: str) -> None:
    """Run the reference FAB-T (torch) at every epsilon and write its figures to `path`."""
    import torch
    from autoattack.fab_pt import FABAttack_PT

    w1, b1, w2, b2 = (torch.from_numpy(v) for v in weights())

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.reshape(len(x), -1) @ w1 + b1) @ w2 + b2

    x, labels = images_and_labels()
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    figures = {}
    for eps in EPSILONS:
        attack = FABAttack_PT(predict, norm="Linf", n_restarts=1, n_iter=100, eps=eps, alpha_max=0.1, eta=1.05,
                              beta=0.9, targeted=True, n_target_classes=CLASSES - 1, seed=0, device="cpu")
        adv = attack.perturb(xt, yt).numpy()
        size = np.abs(adv.astype(np.float64) - x).reshape(len(x), -1).max(axis=1)
        fooled = (logits_numpy(adv).argmax(axis=1) != labels) & (size <= eps)
        fooled[list(MISLABELLED)] = True  # misclassified clean: the reference returns them unattacked
        figures[str(eps)] = {"fooled": fooled.astype(int).tolist(), "size": [round(float(s), 7) for s in size]}
    doc = {
        "reference": "fra31/auto-attack a39220048b3c9f2cca9a4d3a54604793c68eca7e FABAttack_PT, targeted, Linf",
        "torch": torch.__version__,
        "settings": {"n_restarts": 1, "n_iter": 100, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9,
                     "n_target_classes": CLASSES - 1},
        "epsilons": figures,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
