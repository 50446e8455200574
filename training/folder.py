"""``folder:DIR``: one sub-folder per class (sorted names), images found by extension."""

from __future__ import annotations

import os

import numpy as np

from training.dataset_files import IMAGE_EXTENSIONS, task_name
from training.dataset_types import Dataset, DatasetError, Split, make_dataset, split_grouped


def load_folder(spec: str, root: str, *, seed: int) -> Dataset:
    """Each image is its own group, as a class folder carries no patient ids."""
    classes = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DatasetError(f"{root}: expected one sub-folder per class, got no sub-folders")
    ids: list[str] = []
    labels: list[int] = []
    paths: list[str] = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        found = sorted(
            os.path.relpath(path, root).replace(os.sep, "/")
            for path in _walk_images(class_dir)
        )
        if not found:
            raise DatasetError(
                f"{class_dir}: expected images ({', '.join(IMAGE_EXTENSIONS)}) for class {name!r}, got none"
            )
        ids.extend(found)
        labels.extend([label] * len(found))
        paths.extend(os.path.join(root, *rel.split("/")) for rel in found)
    if len(classes) < 2:
        raise DatasetError(f"{root}: expected at least 2 class sub-folders, got {len(classes)} ({classes[0]})")
    everything = Split(
        ids=tuple(ids), labels=np.asarray(labels, dtype=np.int64), groups=tuple(ids), paths=tuple(paths)
    )
    train, val, test = split_grouped(everything, seed=seed, described_as=root)
    return make_dataset(
        kind="folder", source=spec, default_task=task_name(os.path.basename(root), "folder"),
        class_names=classes, train=train, val=val, test=test,
    )


def _walk_images(class_dir: str) -> list[str]:
    # Nested folders may repeat file names, so ids are paths relative to the dataset folder.
    out: list[str] = []
    for directory, subdirs, files in os.walk(class_dir):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        out.extend(
            os.path.abspath(os.path.join(directory, f)) for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        )
    return out
