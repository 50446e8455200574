"""``medmnist:FILE.npz`` and ``medmnist:NAME[@SIZE]``: MedMNIST v2 2D files with official splits."""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from training.dataset_files import task_name
from training.dataset_types import SPLIT_NAMES, Dataset, DatasetError, Split, make_dataset
from training.medmnist_download import INFO, SIZES, MedMnistInfo, fetch

_NAME_SPEC = re.compile(r"^(?P<name>[a-z0-9]+)(?:@(?P<size>\d+))?$")
_FILE_NAME = re.compile(r"^(?P<name>[a-z0-9]+?)(?:_(?P<size>\d+))?$")
# Short task names; "derm" matches the HAM10000 reader's task for the same seven classes.
_TASKS = {"dermamnist": "derm"}


def task_for(name: str) -> str:
    """``retinamnist`` -> ``retina``, ``dermamnist`` -> ``derm``."""
    return _TASKS.get(name, task_name(name.removesuffix("mnist"), name))


def load_medmnist(spec: str, argument: str, *, cache_dir=None) -> Dataset:
    """A local ``.npz`` file, or a named dataset downloaded (MD5-checked) into the cache."""
    if argument.lower().endswith(".npz") or os.sep in argument or os.path.isfile(argument):
        path = os.path.abspath(os.path.expanduser(argument))
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: expected a MedMNIST .npz file for {spec!r}, got no such file")
        # Published file names (retinamnist.npz, dermamnist_64.npz) give class names and task.
        stem = os.path.splitext(os.path.basename(path))[0].lower()
        match = _FILE_NAME.match(stem)
        info = INFO.get(match.group("name")) if match else None
        task = task_for(info.name) if info else task_name(stem, "medmnist")
        return _from_npz(spec, path, info, task)

    match = _NAME_SPEC.match(argument.lower())
    if not match:
        raise DatasetError(f"expected medmnist:FILE.npz or medmnist:NAME[@SIZE] (e.g. dermamnist@64), got {spec!r}")
    name, size = match.group("name"), int(match.group("size") or 28)
    if name not in INFO:
        raise DatasetError(f"expected a 2D MedMNIST name ({', '.join(sorted(INFO))}), got {name!r} in {spec!r}")
    info = INFO[name]
    if info.multi_label:
        raise DatasetError(_multi_label_message(spec, name))
    if size not in SIZES:
        raise DatasetError(f"expected a MedMNIST size in {SIZES}, got {size} in {spec!r}")
    return _from_npz(spec, str(fetch(info, size, cache_dir)), info, task_for(name))


def _multi_label_message(where: str, name: str) -> str:
    return (
        f"{where}: expected single-label classes (one label per image), got {name}, which is "
        f"multi-label; medrobust trains single-label classifiers (use chestxray14:DIR for a "
        f"binary pneumothorax task from ChestX-ray14)"
    )


def _from_npz(spec: str, path: str, info: MedMnistInfo | None, task: str) -> Dataset:
    wanted = [f"{split}_{part}" for split in SPLIT_NAMES for part in ("images", "labels")]
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in wanted if key not in archive.files]
            if missing:
                raise DatasetError(
                    f"{path}: expected MedMNIST keys {', '.join(wanted)}, missing {', '.join(missing)} "
                    f"(got {', '.join(archive.files) or 'no arrays'})"
                )
            arrays = {key: archive[key] for key in wanted}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: expected a MedMNIST .npz archive, got an unreadable file ({exc})") from None

    splits = []
    for split in SPLIT_NAMES:
        images = _rgb_images(path, split, arrays[f"{split}_images"])
        labels = _labels(path, split, arrays[f"{split}_labels"], info)
        if len(labels) != len(images):
            raise DatasetError(
                f"{path}: expected one {split} label per image, got {len(labels)} labels for {len(images)} images"
            )
        ids = tuple(f"{split}/{i}" for i in range(len(labels)))
        splits.append(Split(ids=ids, labels=labels, groups=ids, images=images))

    if info is not None:
        class_names = info.class_names
    else:
        top = max(int(s.labels.max()) for s in splits if len(s))
        class_names = tuple(str(i) for i in range(top + 1))
    train, val, test = splits
    return make_dataset(
        kind="medmnist", source=spec, default_task=task, class_names=class_names,
        train=train, val=val, test=test,
    )


def _rgb_images(path: str, split: str, images: np.ndarray) -> np.ndarray:
    """[N, h, w] grey, [N, h, w, 1] or [N, h, w, 3] uint8 -> [N, h, w, 3] uint8."""
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: expected {split}_images of dtype uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise DatasetError(
            f"{path}: expected 2D {split}_images shaped [N, h, w] or [N, h, w, 3], got "
            f"{list(images.shape)} (3D MedMNIST volumes are not supported)"
        )
    return np.repeat(images, 3, axis=3) if images.shape[3] == 1 else images


def _labels(path: str, split: str, labels: np.ndarray, info: MedMnistInfo | None) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:
        what = info.name if info else f"a file with {labels.shape[1]} labels per image"
        raise DatasetError(_multi_label_message(path, what))
    flat = labels.reshape(-1) if labels.ndim == 2 else labels
    if flat.ndim != 1 or not (np.issubdtype(flat.dtype, np.integer) or np.issubdtype(flat.dtype, np.floating)):
        raise DatasetError(
            f"{path}: expected {split}_labels shaped [N] or [N, 1] of integers, got "
            f"{flat.dtype} {list(labels.shape)}"
        )
    as_int = flat.astype(np.int64)
    if not np.array_equal(as_int, flat):
        raise DatasetError(f"{path}: expected whole-number {split}_labels, got fractional values")
    top = len(info.class_names) - 1 if info else None
    if len(as_int) and (as_int.min() < 0 or (top is not None and as_int.max() > top)):
        expected = f"0..{top} ({info.name})" if info else "non-negative values"
        raise DatasetError(
            f"{path}: expected {split}_labels in {expected}, got {as_int.min()}..{as_int.max()}"
        )
    return as_int
