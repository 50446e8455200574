"""HAM10000: ``HAM10000_metadata.csv`` plus ``<image_id>.jpg`` files anywhere under the folder."""

from __future__ import annotations

import os

import numpy as np

from training.dataset_files import index_files, read_csv, resolve_images, unique_column
from training.dataset_types import Dataset, DatasetError, Split, make_dataset, split_grouped

METADATA = "HAM10000_metadata.csv"
# DermaMNIST's order, so a model trained on either reads the same class ids.
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def load_ham10000(spec: str, root: str, *, seed: int) -> Dataset:
    """Seeded split grouped by ``lesion_id``: images of one lesion never straddle splits."""
    csv_path = os.path.join(root, METADATA)
    rows = read_csv(csv_path, ("lesion_id", "image_id", "dx"))
    image_ids = unique_column(csv_path, rows, "image_id")
    labels = []
    for line, row in enumerate(rows, start=2):
        if row["dx"] not in CLASSES:
            raise DatasetError(
                f"{csv_path}: line {line}: expected dx one of {', '.join(CLASSES)}, got {row['dx']!r}"
            )
        if not row["lesion_id"]:
            raise DatasetError(f"{csv_path}: line {line}: expected a lesion_id, got an empty cell")
        labels.append(CLASSES.index(row["dx"]))
    paths = resolve_images(
        csv_path, root, [f"{image_id}.jpg" for image_id in image_ids], index_files(root, (".jpg",)),
        expected="<image_id>.jpg",
    )
    everything = Split(
        ids=tuple(image_ids),
        labels=np.asarray(labels, dtype=np.int64),
        groups=tuple(row["lesion_id"] for row in rows),
        paths=paths,
    )
    train, val, test = split_grouped(everything, seed=seed, described_as=csv_path)
    return make_dataset(
        kind="ham10000", source=spec, default_task="derm", class_names=CLASSES,
        train=train, val=val, test=test,
    )
