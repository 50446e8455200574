"""Reading the files that clinical datasets ship: label CSVs and images scattered under a folder."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence

from training.dataset_types import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


def read_csv(path: str, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV with at least the ``required`` columns; fails naming the file otherwise."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: expected a CSV file with columns {', '.join(required)}, got no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise DatasetError(
                    f"{path}: expected columns {', '.join(required)}, missing {', '.join(missing)} "
                    f"(got columns {', '.join(header) or 'none'})"
                )
            rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: expected a UTF-8 CSV file, got unreadable content ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: expected at least one data row, got only a header")
    return rows


def unique_column(path: str, rows: Sequence[dict[str, str]], column: str) -> list[str]:
    """The values of ``column``, each required to be present and unique."""
    values = [row[column] for row in rows]
    seen: set[str] = set()
    for line, value in enumerate(values, start=2):
        if not value:
            raise DatasetError(f"{path}: line {line}: expected a value in column {column!r}, got an empty cell")
        if value in seen:
            raise DatasetError(f"{path}: line {line}: expected each {column!r} once, got {value!r} again")
        seen.add(value)
    return values


def index_files(root: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> dict[str, str]:
    """File name -> absolute path for every file under ``root`` with one of ``extensions``.

    Users unpack archives in different layouts (HAM10000 ships two image folders, ChestX-ray14
    twelve), so images are found anywhere below the dataset folder. Walk order is sorted so that
    duplicates resolve the same way on every machine.
    """
    wanted = tuple(ext.lower() for ext in extensions)
    found: dict[str, str] = {}
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(wanted) and not name.startswith("."):
                found.setdefault(name, os.path.abspath(os.path.join(directory, name)))
    return found


def resolve_images(
    csv_path: str, root: str, names: Sequence[str], index: dict[str, str], *, expected: str
) -> tuple[str, ...]:
    """Absolute paths for image file ``names``; every one must exist (checked now, not mid-epoch)."""
    missing = [name for name in names if name not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(
            f"{csv_path}: expected an image file {expected} under {root} for every row, got "
            f"{len(missing)} of {len(names)} missing: {shown}"
        )
    return tuple(index[name] for name in names)


def task_name(text: str, fallback: str) -> str:
    """A task name matching [a-z0-9_]+ derived from ``text`` (e.g. a folder name)."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return name or fallback
