"""Loading datasets: ``load_dataset("KIND:PATH")`` and the image loaders over its splits.

``load_dataset`` picks a reader (one small module per format) from :data:`READERS` and returns a
:class:`~training.dataset_types.Dataset` with train/val/test splits and a fingerprint that
identifies the data independently of where it lives. The types live in
:mod:`training.dataset_types`, which the readers import instead of this module, so there is no
cycle. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from training.contract import imaging
from training.contract.image_errors import ImageError, InvalidImage
from training.dataset_types import Dataset, DatasetError, Split


@dataclass(frozen=True)
class Reader:
    """How :func:`load_dataset` calls one kind's reader: ``function(spec, where, **options)``."""

    target: str  # "module:function"
    directory: bool  # the text after the colon must name a directory; the reader gets its path
    options: tuple[str, ...]  # which of load_dataset's keyword options the reader takes

    def resolve(self) -> Callable[..., Dataset]:
        """The reader function, importing its module now."""
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


# The only place that knows the kinds. Readers are named, not imported, so that importing this
# module stays cheap and a reader's module is loaded only when its kind is used.
READERS: dict[str, Reader] = {
    "medmnist": Reader("training.medmnist:load_medmnist", directory=False, options=("cache_dir",)),
    "ham10000": Reader("training.ham10000:load_ham10000", directory=True, options=("seed",)),
    "kaggle-dr": Reader("training.kaggle_dr:load_kaggle_dr", directory=True, options=("seed",)),
    "chestxray14": Reader("training.chestxray14:load_chestxray14", directory=True, options=("seed",)),
    "folder": Reader("training.folder:load_folder", directory=True, options=("seed",)),
    "dicom": Reader("training.dicom_dir:load_dicom_dir", directory=True, options=("seed",)),
    "synthetic": Reader("training.synthetic:load_synthetic", directory=False, options=("seed",)),
}


def load_dataset(
    spec: str, *, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> Dataset:
    """Read the dataset named by ``KIND:PATH`` (e.g. ``ham10000:/data/ham``, ``synthetic:600``)."""
    reader, where = _reader(spec)
    function = reader.resolve()
    given = {"seed": seed, "cache_dir": cache_dir}
    return function(spec, where, **{name: given[name] for name in reader.options})


def check_spec(spec: str) -> None:
    """Raise DatasetError unless ``spec`` names a known kind (and the directory, for kinds read from
    one); reads no data and imports no reader, so a command can check it before any heavy import."""
    _reader(spec)


def _reader(spec: str) -> tuple[Reader, str]:
    kind, _, argument = spec.partition(":")
    reader = READERS.get(kind)
    if reader is None:
        raise DatasetError(
            f"expected a dataset spec KIND:PATH with KIND one of {', '.join(READERS)}, got {spec!r}"
        )
    return reader, (_directory(spec, argument) if reader.directory else argument)


def _directory(spec: str, argument: str) -> str:
    if not argument:
        raise DatasetError(f"expected {spec.split(':', maxsplit=1)[0]}:DIR naming a directory, got {spec!r}")
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
    paths, ids = split.paths, split.ids
    assert paths is not None  # a Split holds exactly one of images and paths

    def one(i: int) -> np.ndarray:
        # Errors name the sample's id, not its path: a DICOM export's path may hold the patient's name,
        # and these messages reach the audit store when an audit set fails to load.
        try:
            with open(paths[i], "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise InvalidImage(f"{ids[i]}: expected a readable image file, got {exc.strerror}") from None
        try:
            return imaging.resize_uint8(imaging.decode_image(data, max_side=max_side), size)
        except ImageError as exc:
            raise type(exc)(f"{ids[i]}: {exc}") from None

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
