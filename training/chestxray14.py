"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` plus PNGs (or DICOMs); binary pneumothorax label."""

from __future__ import annotations

import os

import numpy as np

from training.dataset_files import index_files, read_csv, resolve_images, unique_column
from training.dataset_types import Dataset, DatasetError, Split, make_dataset, split_grouped

DATA_ENTRY = "Data_Entry_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
CLASSES = ("no pneumothorax", "pneumothorax")
FINDING = "Pneumothorax"


def _read_list(path: str) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        return {line.strip() for line in handle if line.strip()}


def _png_or_dicom(root: str) -> dict[str, str]:
    """Image Index -> file: the PNG, or else a DICOM of the same name (``00000001_000.dcm``)."""
    found = index_files(root, (".png", ".dcm"))
    # A PACS export keeps the name and changes the extension; the CSV still says .png.
    for name, path in sorted(found.items()):
        stem, extension = os.path.splitext(name)
        if extension.lower() == ".dcm":
            found.setdefault(f"{stem}.png", path)
    return found


def load_chestxray14(spec: str, root: str, *, seed: int) -> Dataset:
    """Split by ``Patient ID``; the official test list is used when the folder has it."""
    csv_path = os.path.join(root, DATA_ENTRY)
    rows = read_csv(csv_path, ("Image Index", "Finding Labels", "Patient ID"))
    names = unique_column(csv_path, rows, "Image Index")
    for line, row in enumerate(rows, start=2):
        if not row["Patient ID"]:
            raise DatasetError(f"{csv_path}: line {line}: expected a Patient ID, got an empty cell")
    labels = np.asarray(
        [int(FINDING in row["Finding Labels"].split("|")) for row in rows], dtype=np.int64
    )
    paths = resolve_images(csv_path, root, names, _png_or_dicom(root), expected="<Image Index> (or its .dcm)")
    everything = Split(
        ids=tuple(names), labels=labels, groups=tuple(row["Patient ID"] for row in rows), paths=paths
    )

    test_list = os.path.join(root, TEST_LIST)
    if os.path.isfile(test_list):
        official_test = _read_list(test_list)
        in_test = np.array([name in official_test for name in names])
        # The official lists are already split by patient; val is carved from train_val by patient.
        train, val, _ = split_grouped(
            everything.subset(np.flatnonzero(~in_test)), seed=seed, described_as=csv_path,
            fractions=(0.875, 0.125, 0.0),
        )
        test = everything.subset(np.flatnonzero(in_test))
        train_val_list = os.path.join(root, TRAIN_VAL_LIST)
        if os.path.isfile(train_val_list):
            unlisted = set(train.ids + val.ids) - _read_list(train_val_list)
            if unlisted:
                raise DatasetError(
                    f"{train_val_list}: expected every image not in {TEST_LIST} to be listed, got "
                    f"{len(unlisted)} unlisted, e.g. {sorted(unlisted)[0]}"
                )
    else:
        train, val, test = split_grouped(everything, seed=seed, described_as=csv_path)
    return make_dataset(
        kind="chestxray14", source=spec, default_task="pneumothorax", class_names=CLASSES,
        train=train, val=val, test=test,
    )
