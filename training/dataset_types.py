"""Datasets as plain frozen values: ids, labels, groups and images (in memory or on disk).

Readers (one small module per format) build a :class:`Dataset` of train/val/test :class:`Split` s
with :func:`make_dataset`, which adds a fingerprint that identifies the data independently of
where it lives. The readers import this module, never :mod:`training.datasets`, which imports
them, so there is no cycle. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.splits import grouped_stratified_split

SPLIT_NAMES = ("train", "val", "test")


class DatasetError(ValueError):
    """Dataset input the system cannot use; the message names the file, expected and received."""


@dataclass(frozen=True)
class Split:
    """One of train/val/test: ids, int64 labels, groups, and images in memory or as file paths.

    ``masks`` (bool [N, h, w], the images' height and width) marks where each image's finding is,
    when the source knows it (the synthetic set does): what a Grad-CAM heatmap is checked against.
    """

    ids: tuple[str, ...]
    labels: np.ndarray
    groups: tuple[str, ...]
    images: np.ndarray | None = None
    paths: tuple[str, ...] | None = None
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.labels.shape != (n,) or len(self.groups) != n:
            raise ValueError(
                f"expected {n} labels and groups, got labels {list(self.labels.shape)} and "
                f"{len(self.groups)} groups"
            )
        if (self.images is None) == (self.paths is None):
            raise ValueError("expected exactly one of images or paths")
        if self.images is not None and (
            self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[0] != n
            or self.images.shape[3] != 3
        ):
            raise ValueError(
                f"expected images uint8 [{n}, h, w, 3], got {self.images.dtype} {list(self.images.shape)}"
            )
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"expected {n} paths, got {len(self.paths)}")
        if self.masks is not None and (
            self.images is None or self.masks.dtype != np.bool_ or self.masks.shape != self.images.shape[:3]
        ):
            shape = None if self.images is None else [n, *self.images.shape[1:3]]
            raise ValueError(
                f"expected masks bool {shape} beside in-memory images, got {self.masks.dtype} {list(self.masks.shape)}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Split:
        """The samples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Split(
            ids=tuple(self.ids[i] for i in idx),
            labels=self.labels[idx],
            groups=tuple(self.groups[i] for i in idx),
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else tuple(self.paths[i] for i in idx),
            masks=None if self.masks is None else self.masks[idx],
        )


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset split into train/val/test, plus what the model card needs to know."""

    kind: str
    source: str
    default_task: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    fingerprint: str
    synthetic: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Split:
        """The split called ``name`` ("train", "val" or "test")."""
        if name not in SPLIT_NAMES:
            raise KeyError(f"expected a split name in {SPLIT_NAMES}, got {name!r}")
        return getattr(self, name)


def fingerprint(kind: str, class_names: Sequence[str], splits: Sequence[Split]) -> str:
    """sha256 over kind, class names and each split's ids and labels (never absolute paths).

    In-memory splits add their image shape, so a 28 px and a 64 px copy of the same MedMNIST
    dataset differ.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": kind, "class_names": list(class_names)}).encode())
    for name, split in zip(SPLIT_NAMES, splits):
        shape = None if split.images is None else list(split.images.shape[1:])
        digest.update(json.dumps({"split": name, "n": len(split), "image_shape": shape}).encode())
        digest.update("\n".join(split.ids).encode())
        digest.update(np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def make_dataset(
    *,
    kind: str,
    source: str,
    default_task: str,
    class_names: Sequence[str],
    train: Split,
    val: Split,
    test: Split,
    synthetic: bool = False,
) -> Dataset:
    """Build a :class:`Dataset`, checking labels against the classes and computing the fingerprint."""
    names = tuple(class_names)
    for split_name, split in zip(SPLIT_NAMES, (train, val, test)):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(names)):
            raise DatasetError(
                f"{source}: expected {split_name} labels in 0..{len(names) - 1}, got "
                f"{split.labels.min()}..{split.labels.max()}"
            )
    return Dataset(
        kind=kind,
        source=source,
        default_task=default_task,
        class_names=names,
        train=train,
        val=val,
        test=test,
        fingerprint=fingerprint(kind, names, (train, val, test)),
        synthetic=synthetic,
    )


def split_grouped(
    everything: Split, *, seed: int, described_as: str, fractions=(0.7, 0.15, 0.15)
) -> tuple[Split, Split, Split]:
    """Seeded grouped stratified train/val/test of ``everything``; errors name ``described_as``."""
    try:
        parts = grouped_stratified_split(
            everything.labels, everything.groups, fractions=fractions, seed=seed
        )
    except ValueError as exc:
        raise DatasetError(f"{described_as}: cannot split into train/val/test: {exc}") from None
    return tuple(everything.subset(part) for part in parts)  # type: ignore[return-value]
