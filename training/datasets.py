"""Datasets as plain frozen values: ids, labels, groups and images (in memory or on disk).

``load_dataset("KIND:PATH")`` picks a reader (one small module per format) and returns a
:class:`Dataset` with train/val/test :class:`Split` s and a fingerprint that identifies the data
independently of where it lives. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from training import imaging
from training.splits import grouped_stratified_split

SPLIT_NAMES = ("train", "val", "test")
KNOWN_KINDS = ("medmnist", "ham10000", "kaggle-dr", "chestxray14", "folder", "synthetic")


class DatasetError(ValueError):
    """Dataset input the system cannot use; the message names the file, expected and received."""


@dataclass(frozen=True)
class Split:
    """One of train/val/test: ids, int64 labels, groups, and images in memory or as file paths."""

    ids: tuple[str, ...]
    labels: np.ndarray
    groups: tuple[str, ...]
    images: np.ndarray | None = None
    paths: tuple[str, ...] | None = None

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


def load_dataset(
    spec: str, *, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> Dataset:
    """Read the dataset named by ``KIND:PATH`` (e.g. ``ham10000:/data/ham``, ``synthetic:600``)."""
    kind, _, argument = spec.partition(":")
    # Readers are imported here so that importing this module stays cheap and free of cycles.
    if kind == "medmnist":
        from training.medmnist import load_medmnist

        return load_medmnist(spec, argument, cache_dir=cache_dir)
    if kind == "ham10000":
        from training.ham10000 import load_ham10000

        return load_ham10000(spec, _directory(spec, argument), seed=seed)
    if kind == "kaggle-dr":
        from training.kaggle_dr import load_kaggle_dr

        return load_kaggle_dr(spec, _directory(spec, argument), seed=seed)
    if kind == "chestxray14":
        from training.chestxray14 import load_chestxray14

        return load_chestxray14(spec, _directory(spec, argument), seed=seed)
    if kind == "folder":
        from training.folder import load_folder

        return load_folder(spec, _directory(spec, argument), seed=seed)
    if kind == "synthetic":
        from training.synthetic import load_synthetic

        return load_synthetic(spec, argument, seed=seed)
    raise DatasetError(
        f"expected a dataset spec KIND:PATH with KIND one of {', '.join(KNOWN_KINDS)}, got {spec!r}"
    )


def _directory(spec: str, argument: str) -> str:
    if not argument:
        raise DatasetError(f"expected {spec.split(':')[0]}:DIR naming a directory, got {spec!r}")
    path = os.path.abspath(os.path.expanduser(argument))
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: expected a directory for {spec!r}, got no such directory")
    return path


def load_uint8(
    split: Split, size: int, indices=None, *, max_side: int | None = None
) -> np.ndarray:
    """uint8 [n, size, size, 3] through the shared imaging path; files decode in a thread pool."""
    idx = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if split.images is not None:
        return np.stack([imaging.resize_uint8(split.images[i], size) for i in idx]) if len(idx) else (
            np.zeros((0, size, size, 3), np.uint8)
        )
    paths = split.paths

    def one(i: int) -> np.ndarray:
        return imaging.resize_uint8(imaging.decode_image_file(paths[i], max_side=max_side), size)

    out = np.zeros((len(idx), size, size, 3), np.uint8)
    # PIL releases the GIL while decoding, so threads overlap the work.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for row, image in enumerate(pool.map(one, idx.tolist())):
            out[row] = image
    return out


def load_images(
    split: Split, size: int, indices=None, *, max_side: int | None = None
) -> np.ndarray:
    """float32 [n, size, size, 3] in [0, 1] for the samples at ``indices`` (default: all)."""
    return load_uint8(split, size, indices, max_side=max_side).astype(np.float32) / np.float32(255.0)
