"""What the APGD and Square loops share: their result, the true-class margin and the checks on their inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class AttackRun:
    """One attack over a batch: the examples, which of them fool the model, margin curves and cost."""

    adversarial: np.ndarray  # float32 [n,H,W,3]: first fooling point, else the best point; within eps of x, in [0,1]
    fooled: np.ndarray  # bool [n]: the model's logits at `adversarial` put it in another class than the label
    margins: np.ndarray  # float32 [rows, n]: per row, the lowest true-class margin seen so far (row 0: start)
    calls: int  # model calls made (each call is one batch)


def true_class_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """z_y - max_{i != y} z_i per row: negative when another class wins."""
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    margin: np.ndarray = (true - others.max(axis=1)).astype(np.float32)
    return margin


def check_batch(
    images: npt.ArrayLike, labels: npt.ArrayLike, epsilon: float, clean_logits: npt.ArrayLike, rng: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch as float32 images, int64 labels and float32 clean logits, or a ValueError saying what is wrong."""
    batch = check_inputs(images, labels, epsilon, clean_logits)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"expected rng to be a numpy.random.Generator, got {type(rng).__name__}")
    return batch


def check_inputs(
    images: npt.ArrayLike, labels: npt.ArrayLike, epsilon: float, clean_logits: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`check_batch` for an attack that draws nothing at random (FAB-T)."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images of shape [n, H, W, 3], got {x.shape}")
    if x.size and (np.isnan(x).any() or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"expected images in [0, 1], got values in [{np.nanmin(x)}, {np.nanmax(x)}]")
    raw_labels = np.asarray(labels)
    if raw_labels.shape != (len(x),) or not np.issubdtype(raw_labels.dtype, np.integer):
        raise ValueError(f"expected integer labels of shape ({len(x)},), got {raw_labels.dtype} {raw_labels.shape}")
    z = np.asarray(clean_logits, np.float32)
    if z.ndim != 2 or z.shape[0] != len(x) or z.shape[1] < 2:
        raise ValueError(f"expected clean_logits of shape ({len(x)}, K) with K >= 2, got {z.shape}")
    y = raw_labels.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"expected labels in [0, {z.shape[1]}), got values in [{y.min()}, {y.max()}]")
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"expected epsilon >= 0, got {epsilon}")
    return x, y, z


def check_at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {value!r}")


def check_output(what: str, array: npt.ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    """A model's output as float32, checked against the shape the attack needs."""
    out = np.asarray(array, np.float32)
    if out.shape != shape:
        raise ValueError(f"expected {what} of shape {shape} from the model, got {out.shape}")
    return out


def unattacked(x: np.ndarray, y: np.ndarray, clean_logits: np.ndarray, rows: int) -> AttackRun:
    """The result when nothing is attacked: clean images, clean verdicts and margins, no call."""
    margin = true_class_margin(clean_logits, y)
    return AttackRun(
        adversarial=x.copy(),
        fooled=clean_logits.argmax(axis=1) != y,
        margins=np.repeat(margin[None, :], rows, axis=0),
        calls=0,
    )


def merge(x: np.ndarray, y: np.ndarray, clean_logits: np.ndarray, idx: np.ndarray, run: AttackRun) -> AttackRun:
    """A run over images `idx` spread over the whole batch; the other images keep their clean verdicts."""
    whole = unattacked(x, y, clean_logits, len(run.margins))
    whole.adversarial[idx] = run.adversarial
    whole.fooled[idx] = run.fooled
    whole.margins[:, idx] = run.margins
    return AttackRun(whole.adversarial, whole.fooled, whole.margins, run.calls)
