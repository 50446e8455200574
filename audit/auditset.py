"""The audit set: N images drawn seeded and class-stratified from the dataset's test split."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from audit.results import AuditSet

if TYPE_CHECKING:
    from training.dataset_types import Dataset


def stratified_indices(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """`n` indices into `labels`, per class in proportion to its share (largest remainder), sorted.

    Every class present gets at least one image when `n` allows, so per-class robust accuracy exists.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n < 1:
        raise ValueError(f"expected an audit set of at least 1 image, got {n}")
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, n])
    classes, counts = np.unique(labels, return_counts=True)
    share = counts / counts.sum() * n
    take = np.floor(share).astype(np.int64)
    if n >= len(classes):
        take = np.maximum(take, 1)
    while take.sum() > n:  # the minimum of one can overshoot: trim the largest
        take[np.argmax(take)] -= 1
    remainder = share - np.floor(share)
    for i in np.argsort(-remainder, kind="stable"):
        if take.sum() >= n:
            break
        if take[i] < counts[i]:
            take[i] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def audit_set_fingerprint(dataset_fingerprint: str, image_size: int, ids: Sequence[str], labels: npt.ArrayLike) -> str:
    """sha256 over the dataset's fingerprint, the input size and the chosen ids and labels."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"dataset": dataset_fingerprint, "image_size": int(image_size)}).encode())
    digest.update("\n".join(ids).encode())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def draw_audit_set(dataset: Dataset, *, n: int, seed: int, image_size: int) -> tuple[AuditSet, np.ndarray]:
    """The audit set and its images (float32 [n, size, size, 3] in [0, 1]) from `dataset.test`."""
    from training.datasets import load_images

    test = dataset.test
    if len(test) == 0:
        raise ValueError(f"{dataset.source}: expected a non-empty test split to draw the audit set from, got 0 images")
    idx = stratified_indices(test.labels, n, seed=seed)
    ids = tuple(test.ids[i] for i in idx)
    labels = test.labels[idx]
    images = load_images(test, image_size, idx)
    audit_set = AuditSet(
        fingerprint=audit_set_fingerprint(dataset.fingerprint, image_size, ids, labels),
        dataset_fingerprint=dataset.fingerprint,
        dataset=dataset.source,
        seed=seed,
        image_size=image_size,
        sample_ids=ids,
        labels=tuple(int(v) for v in labels),
        class_names=tuple(dataset.class_names),
    )
    return audit_set, images
