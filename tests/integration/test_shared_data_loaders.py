"""The readers and the decode path on the real datasets in ../shared/data (see its README)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.contract.imaging import decode_image_file
from training.datasets import load_dataset, load_images
from training.medmnist_download import INFO

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data is absent: expected the real test datasets at {SHARED}")
    return SHARED


def class_counts(split, num_classes: int) -> list[int]:
    return np.bincount(split.labels, minlength=num_classes).tolist()


def assert_groups_disjoint(data) -> None:
    sides = [set(data.split(s).groups) for s in ("train", "val", "test")]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_retinamnist_npz_official_file(shared):
    path = shared / "medmnist" / "retinamnist.npz"
    assert hashlib.md5(path.read_bytes()).hexdigest() == INFO["retinamnist"].md5[28]
    data = load_dataset(f"medmnist:{path}")
    assert data.default_task == "retina" and len(data.class_names) == 5
    assert (len(data.train), len(data.val), len(data.test)) == (1080, 120, 400)
    assert class_counts(data.train, 5) == [486, 128, 206, 194, 66]
    assert class_counts(data.test, 5) == [174, 46, 92, 68, 20]
    assert data.train.images.shape == (1080, 28, 28, 3)


def test_pneumoniamnist_grey_npz_becomes_rgb(shared):
    data = load_dataset(f"medmnist:{shared / 'medmnist' / 'pneumoniamnist.npz'}")
    assert data.class_names == ("normal", "pneumonia") and data.default_task == "pneumonia"
    assert [class_counts(data.split(s), 2) for s in ("train", "val", "test")] == [[1214, 3494], [135, 389], [234, 390]]
    images = data.train.images
    assert images.shape == (4708, 28, 28, 3)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()


def test_ham10000_seven_classes_split_by_lesion(shared):
    data = load_dataset(f"ham10000:{shared / 'ham10000'}", seed=0)
    assert data.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    total = sum((np.array(class_counts(data.split(s), 7)) for s in ("train", "val", "test")), np.zeros(7, int))
    assert dict(zip(data.class_names, total.tolist())) == {
        "nv": 4323, "bkl": 583, "mel": 491, "bcc": 264, "akiec": 183, "vasc": 80, "df": 60,
    }
    assert_groups_disjoint(data)
    train_share = len(data.train) / total.sum()
    assert 0.65 < train_share < 0.75
    for s in ("val", "test"):  # every class reaches every split, roughly in proportion
        assert all(c > 0 for c in class_counts(data.split(s), 7))
    images = load_images(data.test, 64, indices=range(8))
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.float32
    assert load_dataset(f"ham10000:{shared / 'ham10000'}", seed=0).fingerprint == data.fingerprint


def test_chestxray14_patient_grouping_and_png_modes(shared):
    data = load_dataset(f"chestxray14:{shared / 'chestxray14'}", seed=0)
    assert data.class_names == ("no pneumothorax", "pneumothorax")
    labels = np.concatenate([data.split(s).labels for s in ("train", "val", "test")])
    assert len(labels) == 1000 and labels.sum() == 40
    assert_groups_disjoint(data)
    # The README says 278 patients; the CSV actually holds 264 distinct Patient IDs.
    patients = {g for s in ("train", "val", "test") for g in data.split(s).groups}
    assert len(patients) == 264
    for s in ("train", "val", "test"):  # the image name's prefix is the patient: grouping really is by patient
        assert all(int(i[:8]) == int(g) for i, g in zip(data.split(s).ids, data.split(s).groups))

    paths = [p for s in ("train", "val", "test") for p in data.split(s).paths]
    mode_of = {}
    for path in paths:
        with Image.open(path) as image:
            mode_of[path] = image.mode
    modes = Counter(mode_of.values())
    assert set(modes) >= {"RGBA"} and len(modes) >= 2  # a user's mixture, as the README warns
    rgba = next(p for p in paths if mode_of[p] == "RGBA")
    decoded = decode_image_file(rgba)
    assert decoded.shape == (64, 64, 3) and (decoded[..., 0] == decoded[..., 2]).all()
    everything = load_images(data.val, 64)
    assert everything.shape == (len(data.val), 64, 64, 3)


def test_kaggle_dr_tiny_split_keeps_eyes_together(shared):
    data = load_dataset(f"kaggle-dr:{shared / 'kaggle_dr'}", seed=0)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 10
    assert all(len(data.split(s)) > 0 for s in ("train", "val", "test"))
    assert_groups_disjoint(data)
    total = sum((np.array(class_counts(data.split(s), 5)) for s in ("train", "val", "test")), np.zeros(5, int))
    assert total.tolist() == [5, 2, 1, 0, 2]


def test_kaggle_dr_bounded_decode_is_fast(shared):
    photos = sorted((shared / "kaggle_dr" / "train").glob("*.jpeg"))
    start = time.perf_counter()
    full = decode_image_file(photos[0])
    full_seconds = time.perf_counter() - start
    start = time.perf_counter()
    bounded = decode_image_file(photos[0], max_side=512)
    bounded_seconds = time.perf_counter() - start
    assert max(full.shape[:2]) > 2000 and max(bounded.shape[:2]) == 512
    assert bounded.shape[0] / bounded.shape[1] == pytest.approx(full.shape[0] / full.shape[1], rel=0.01)
    assert bounded_seconds < full_seconds / 2


def test_kaggle_dr_bounded_decode_keeps_memory_low(shared):
    # In a fresh process, so the peak resident size measures only these decodes.
    script = """
import json, resource, sys
from pathlib import Path
from training.contract.imaging import decode_image_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shapes = [decode_image_file(p, max_side=int(sys.argv[2])).shape for p in sorted(Path(sys.argv[1]).glob("*.jpeg"))]
print(json.dumps({"kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "shapes": shapes}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(shared / "kaggle_dr" / "train"), "512"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(result.stdout)
    assert len(report["shapes"]) == 10 and all(max(shape[:2]) == 512 for shape in report["shapes"])
    # A full decode of one 15-megapixel photo alone needs about 100 MiB.
    assert report["kib"] < 40 * 1024
