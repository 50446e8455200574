"""Kaggle Diabetic Retinopathy: ``trainLabels.csv`` (image, level) plus ``<image>.jpeg`` files."""

from __future__ import annotations

import os

import numpy as np

from training.dataset_files import index_files, read_csv, resolve_images, unique_column
from training.dataset_types import Dataset, DatasetError, Split, make_dataset, split_grouped

LABELS_CSV = "trainLabels.csv"
CLASSES = ("0 no DR", "1 mild", "2 moderate", "3 severe", "4 proliferative DR")


def patient_of(image: str) -> str:
    """``10_left`` and ``10_right`` are one patient's eyes; they must share a split."""
    stem, _, eye = image.rpartition("_")
    return stem if stem and eye in ("left", "right") else image


def load_kaggle_dr(spec: str, root: str, *, seed: int) -> Dataset:
    """Seeded split grouped by patient; tiny folders still get one patient in val and test."""
    csv_path = os.path.join(root, LABELS_CSV)
    rows = read_csv(csv_path, ("image", "level"))
    images = unique_column(csv_path, rows, "image")
    labels = []
    for line, row in enumerate(rows, start=2):
        level = row["level"]
        if not (level.isdigit() and int(level) < len(CLASSES)):
            raise DatasetError(f"{csv_path}: line {line}: expected level 0..4, got {level!r}")
        labels.append(int(level))
    index = index_files(root, (".jpeg", ".jpg"))
    # The competition ships .jpeg; accept .jpg too for copies that were re-saved.
    names = [f"{image}.jpeg" if f"{image}.jpeg" in index or f"{image}.jpg" not in index else f"{image}.jpg"
             for image in images]
    paths = resolve_images(csv_path, root, names, index, expected="<image>.jpeg")
    everything = Split(
        ids=tuple(images),
        labels=np.asarray(labels, dtype=np.int64),
        groups=tuple(patient_of(image) for image in images),
        paths=paths,
    )
    train, val, test = split_grouped(everything, seed=seed, described_as=csv_path)
    return make_dataset(
        kind="kaggle-dr", source=spec, default_task="dr", class_names=CLASSES,
        train=train, val=val, test=test,
    )
