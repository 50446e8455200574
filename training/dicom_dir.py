"""``dicom:DIR``: DICOM files, classes from sub-folders or ``labels.csv``; split by PatientID.

Files are ``*.dcm`` or, as PACS exports name them, without an extension but with the Part 10
marker; ``DICOMDIR`` indexes are skipped. The PatientID only groups the split: the dataset holds
its sha256, never the id. PACS exports are often named after the patient (``DOE^JANE_*/...``), so
a sample's id is its place in the sorted listing (``dicom/00042``), never its path: ids reach the
audit store, its reports and its logs, the paths stay in memory for reading the files.
"""

from __future__ import annotations

import os

import numpy as np

from training.contract.dicom import has_part10_marker, patient_key
from training.contract.image_errors import ImageError
from training.dataset_files import read_csv, resolve_images, task_name, unique_column
from training.dataset_types import (
    Dataset,
    DatasetError,
    Split,
    make_dataset,
    split_grouped,
)

LABELS = "labels.csv"  # columns: file (a path under DIR, or a file name found anywhere below it), label
DICOMDIR = "DICOMDIR"


def load_dicom_dir(spec: str, root: str, *, seed: int) -> Dataset:
    """Classes from ``labels.csv`` when DIR has one, else one sub-folder per class."""
    csv_path = os.path.join(root, LABELS)
    ids, label_names = _from_csv(csv_path, root) if os.path.isfile(csv_path) else _from_folders(root)
    class_names = sorted(set(label_names))
    if len(class_names) < 2:
        raise DatasetError(f"{root}: expected at least 2 classes, got {len(class_names)} ({', '.join(class_names)})")
    paths = tuple(os.path.join(root, *name.split("/")) for name in ids)
    ids = [f"dicom/{index:05d}" for index in range(len(paths))]
    everything = Split(
        ids=tuple(ids),
        labels=np.asarray([class_names.index(name) for name in label_names], dtype=np.int64),
        groups=tuple(_group(path, name) for path, name in zip(paths, ids)),
        paths=paths,
    )
    train, val, test = split_grouped(everything, seed=seed, described_as=root)
    return make_dataset(
        kind="dicom", source=spec, default_task=task_name(os.path.basename(root), "dicom"),
        class_names=class_names, train=train, val=val, test=test,
    )


def _group(path: str, sample_id: str) -> str:
    try:
        key = patient_key(path)
    except ImageError as exc:  # named by its id: the path may hold the patient's name
        raise DatasetError(f"{sample_id}: {exc}") from None
    # A file without a PatientID is its own group: nothing says which other files share its patient.
    return f"patient:{key}" if key else f"file:{sample_id}"


def _is_dicom_file(path: str, name: str) -> bool:
    if name.startswith(".") or name == DICOMDIR:
        return False
    if name.lower().endswith(".dcm"):
        return True
    if os.path.splitext(name)[1]:
        return False
    with open(path, "rb") as handle:
        return has_part10_marker(handle.read(132))


def _dicom_files(root: str, below: str) -> list[str]:
    """Paths relative to `root` ("/"-separated, sorted) of the DICOM files under `below`."""
    found = []
    for directory, subdirs, files in os.walk(below):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(directory, name)
            if _is_dicom_file(path, name):
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found)


def _from_folders(root: str) -> tuple[list[str], list[str]]:
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: expected {LABELS} or one sub-folder per class, got neither")
    ids, labels = [], []
    for name in classes:
        found = _dicom_files(root, os.path.join(root, name))
        if not found:
            raise DatasetError(
                f"{os.path.join(root, name)}: expected DICOM files (*.dcm, or Part 10 files without an "
                f"extension) for class {name!r}, got none"
            )
        ids.extend(found)
        labels.extend([name] * len(found))
    return ids, labels


def _from_csv(csv_path: str, root: str) -> tuple[list[str], list[str]]:
    rows = read_csv(csv_path, ("file", "label"))
    files = unique_column(csv_path, rows, "file")
    for line, row in enumerate(rows, start=2):
        if not row["label"]:
            raise DatasetError(f"{csv_path}: line {line}: expected a label, got an empty cell")
    relative = _dicom_files(root, root)
    # A row names a path under DIR, or a file name found anywhere below it (first in sorted order).
    index: dict[str, str] = {}
    for rel in relative:
        index.setdefault(rel, rel)
        index.setdefault(rel.rsplit("/", 1)[-1], rel)
    resolved = resolve_images(csv_path, root, [f.replace(os.sep, "/") for f in files], index, expected="named in column 'file'")
    if len(set(resolved)) != len(resolved):
        twice = sorted({rel for rel in resolved if resolved.count(rel) > 1})
        raise DatasetError(f"{csv_path}: expected each file once, got {twice[0]} named by more than one row")
    return list(resolved), [row["label"] for row in rows]
