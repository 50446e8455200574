"""Dataset readers on tiny generated copies of each format, and the error each bad input gets."""

from __future__ import annotations

import csv
import hashlib
import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import medmnist_download
from training.contract.imaging import InvalidImage
from training.dataset_types import DatasetError, Split
from training.datasets import load_dataset, load_images
from training.medmnist import task_for
from training.medmnist_download import INFO, MedMnistInfo

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (16, 12), value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"L": value, "RGBA": (value, value, value, 255)}.get(mode, (value, value // 2, 30))
    Image.new(mode, size, colour).save(path)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_ham(root: Path, per_class: int = 4) -> Path:
    """Two images per lesion for some lesions, images split across two folders as shipped."""
    rows = []
    for label, dx in enumerate(HAM_CLASSES):
        for i in range(per_class):
            lesion = f"HAM_{label}{i // 2}"
            image_id = f"ISIC_{label:02d}{i:03d}"
            rows.append([lesion, image_id, dx, "histo", 50.0, "male", "back"])
            write_image(root / f"HAM10000_images_part_{1 + i % 2}" / f"{image_id}.jpg", value=30 * label)
    write_csv(root / "HAM10000_metadata.csv",
              ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], rows)
    return root


def make_kaggle(root: Path) -> Path:
    levels = [0, 0, 1, 0, 2, 4, 0, 0, 1, 4]
    rows = []
    for i, level in enumerate(levels):
        name = f"{10 + i // 2}_{'left' if i % 2 == 0 else 'right'}"
        rows.append([name, level])
        write_image(root / "train" / f"{name}.jpeg", size=(64, 48))
    write_csv(root / "trainLabels.csv", ["image", "level"], rows)
    return root


def make_chest(root: Path, patients: int = 12, per_patient: int = 3) -> Path:
    rows = []
    for p in range(1, patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            finding = "Pneumothorax|Effusion" if (p + k) % 4 == 0 else "No Finding"
            rows.append([name, finding, k, p, 40, "M", "PA", 1024, 1024, 0.14, 0.14])
            write_image(root / "images" / name, mode=("L", "RGBA", "RGB")[k % 3])
    write_csv(root / "Data_Entry_2017.csv",
              ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
               "OriginalImagePixelSpacing[x", "y]"], rows)
    return root


def make_folder(root: Path, classes=("benign", "malignant"), per_class: int = 6) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / ("sub" if i % 2 else "") / f"img{i}.png", value=40 + 80 * c)
    return root


def make_npz(path: Path, *, grey: bool = True, labels_shape: str = "column", classes: int = 5,
             drop: str | None = None, sizes=(20, 5, 8)) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        shape = (n, 28, 28) if grey else (n, 28, 28, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        labels = np.arange(n) % classes
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8) if labels_shape == "column" else labels
    if drop:
        arrays.pop(drop)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


# --- each reader on a tiny, well-formed copy -----------------------------------------------


def test_ham10000_reader_groups_by_lesion(tmp_path):
    data = load_dataset(f"ham10000:{make_ham(tmp_path / 'ham')}", seed=3)
    assert data.kind == "ham10000" and data.default_task == "derm"
    assert data.class_names == tuple(HAM_CLASSES)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 28
    lesions = [set(data.split(s).groups) for s in ("train", "val", "test")]
    assert not (lesions[0] & lesions[1] or lesions[0] & lesions[2] or lesions[1] & lesions[2])
    assert data.train.paths and all(Path(p).is_file() and Path(p).is_absolute() for p in data.train.paths)
    assert data.train.images is None and not data.synthetic


def test_kaggle_dr_reader_keeps_both_eyes_together(tmp_path):
    data = load_dataset(f"kaggle-dr:{make_kaggle(tmp_path / 'dr')}")
    assert data.default_task == "dr" and len(data.class_names) == 5
    assert data.class_names[0] == "0 no DR"
    assert all(len(data.split(s)) > 0 for s in ("train", "val", "test"))
    for s in ("train", "val", "test"):
        for image_id, group in zip(data.split(s).ids, data.split(s).groups):
            assert image_id.startswith(group + "_")
    sides = [set(data.split(s).groups) for s in ("train", "val", "test")]
    assert sum(map(len, sides)) == 5


def test_chestxray14_reader_binary_pneumothorax_by_patient(tmp_path):
    data = load_dataset(f"chestxray14:{make_chest(tmp_path / 'cxr')}")
    assert data.class_names == ("no pneumothorax", "pneumothorax")
    assert data.default_task == "pneumothorax"
    everything = {i: int(label) for s in ("train", "val", "test") for i, label in zip(data.split(s).ids, data.split(s).labels)}
    assert everything["00000004_000.png"] == 1 and everything["00000001_000.png"] == 0
    patients = [set(data.split(s).groups) for s in ("train", "val", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    images = load_images(data.train, 8)
    assert images.shape == (len(data.train), 8, 8, 3)


def test_chestxray14_uses_the_official_test_list(tmp_path):
    root = make_chest(tmp_path / "cxr")
    test_names = [f"{p:08d}_{k:03d}.png" for p in (1, 2, 3) for k in range(3)]
    (root / "test_list.txt").write_text("\n".join(test_names) + "\n")
    others = [f"{p:08d}_{k:03d}.png" for p in range(4, 13) for k in range(3)]
    (root / "train_val_list.txt").write_text("\n".join(others) + "\n")
    data = load_dataset(f"chestxray14:{root}")
    assert sorted(data.test.ids) == sorted(test_names)
    assert len(data.train) + len(data.val) == len(others) and len(data.val) > 0


def test_folder_reader(tmp_path):
    data = load_dataset(f"folder:{make_folder(tmp_path / 'Skin Photos')}")
    assert data.class_names == ("benign", "malignant")
    assert data.default_task == "skin_photos"
    ids = [i for s in ("train", "val", "test") for i in data.split(s).ids]
    assert sorted(ids)[:2] == ["benign/img0.png", "benign/img2.png"] and "benign/sub/img1.png" in ids


def test_medmnist_npz_grey_becomes_rgb_with_official_splits(tmp_path):
    data = load_dataset(f"medmnist:{make_npz(tmp_path / 'retinamnist.npz')}")
    assert data.default_task == "retina" and data.class_names == ("0", "1", "2", "3", "4")
    assert (len(data.train), len(data.val), len(data.test)) == (20, 5, 8)
    assert data.train.images.shape == (20, 28, 28, 3) and data.train.images.dtype == np.uint8
    assert (data.train.images[..., 0] == data.train.images[..., 2]).all()
    assert data.train.labels.dtype == np.int64 and data.train.labels.shape == (20,)
    assert data.train.ids[3] == "train/3" and data.test.ids[0] == "test/0"


def test_medmnist_unknown_file_name_gets_numbered_classes(tmp_path):
    data = load_dataset(f"medmnist:{make_npz(tmp_path / 'My Scans.npz', grey=False, labels_shape='flat', classes=3)}")
    assert data.class_names == ("0", "1", "2") and data.default_task == "my_scans"


@pytest.mark.parametrize(
    "name, task", [("dermamnist", "derm"), ("retinamnist", "retina"), ("pneumoniamnist", "pneumonia"),
                   ("organamnist", "organa")],
)
def test_medmnist_task_names(name, task):
    assert task_for(name) == task


def test_synthetic_is_labelled_deterministic_and_distinct():
    first = load_dataset("synthetic:60", seed=1)
    again = load_dataset("synthetic:60", seed=1)
    other = load_dataset("synthetic:60", seed=2)
    assert first.synthetic and first.kind == "synthetic" and first.default_task == "synthetic"
    assert all(name.startswith("synthetic lesion") for name in first.class_names)
    assert first.fingerprint == again.fingerprint != other.fingerprint
    np.testing.assert_array_equal(first.train.images, again.train.images)
    assert first.train.images.shape[1:] == (64, 64, 3)
    default = load_dataset("synthetic")
    assert len(default.train) + len(default.val) + len(default.test) == 600


def test_synthetic_masks_are_where_the_lesions_are_drawn():
    from scipy import ndimage

    data = load_dataset("synthetic:60", seed=0)
    split = data.train
    assert split.masks.shape == split.images.shape[:3] and split.masks.dtype == np.bool_
    # Skin is drawn with channel sums of 450 or more, lesions 270 or less, plus noise of sd ~21:
    # 360 parts them by more than 4 sd.
    dark = split.images.astype(np.int32).sum(-1) < 360
    for label, image_dark, mask in zip(split.labels, dark, split.masks):
        if label:  # spots and streaks: the drawn pixels
            assert (image_dark == mask).mean() > 0.995
        else:  # a ring's lesion is the ring with its inside
            filled = ndimage.binary_fill_holes(ndimage.binary_closing(image_dark, iterations=1))
            assert (image_dark & ~mask).sum() <= 2 and (filled == mask).mean() > 0.97
            assert (mask & ~image_dark).sum() > 20  # the inside, which is skin-coloured
    assert data.test.masks is not None and data.test.subset([1, 0]).masks[1].tolist() == data.test.masks[0].tolist()


def test_split_masks_must_match_the_images():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"expected masks bool \[2, 4, 4\] beside in-memory images, got bool \[2, 4, 5\]"):
        Split(ids=("a", "b"), labels=np.zeros(2, np.int64), groups=("a", "b"), images=images,
              masks=np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match=r"expected masks bool None beside in-memory images"):
        Split(ids=("a", "b"), labels=np.zeros(2, np.int64), groups=("a", "b"), paths=("x", "y"),
              masks=np.zeros((2, 4, 4), bool))


def test_fingerprint_ignores_where_the_data_lives(tmp_path):
    first = make_ham(tmp_path / "a")
    second = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, second)
    assert load_dataset(f"ham10000:{first}").fingerprint == load_dataset(f"ham10000:{second}").fingerprint
    assert load_dataset(f"ham10000:{first}", seed=1).fingerprint != load_dataset(f"ham10000:{first}", seed=2).fingerprint


def test_split_subset_and_split_names():
    data = load_dataset("synthetic:30")
    part = data.train.subset([2, 0])
    assert part.ids == (data.train.ids[2], data.train.ids[0]) and len(part) == 2
    np.testing.assert_array_equal(part.images[1], data.train.images[0])
    with pytest.raises(KeyError, match="expected a split name"):
        data.split("holdout")


def test_load_images_files_and_memory(tmp_path):
    data = load_dataset(f"ham10000:{make_ham(tmp_path / 'ham')}")
    images = load_images(data.train, 10, indices=[0, 1])
    assert images.shape == (2, 10, 10, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    memory = load_images(load_dataset("synthetic:30").val, 32)
    assert memory.shape[1:] == (32, 32, 3) and memory.dtype == np.float32


def test_corrupt_image_fails_at_decode_naming_the_sample(tmp_path):
    root = make_ham(tmp_path / "ham")
    victim = next(root.rglob("ISIC_00000.jpg"))
    victim.write_bytes(b"\xff\xd8\xff not really a jpeg")
    data = load_dataset(f"ham10000:{root}")
    split = next(data.split(s) for s in ("train", "val", "test") if "ISIC_00000" in data.split(s).ids)
    with pytest.raises(InvalidImage, match=r"ISIC_00000: expected"):  # the sample id: a path may name a patient
        load_images(split, 8)


# --- bad input: the exact error and message ------------------------------------------------


def _ham_with(tmp_path: Path, edit) -> str:
    root = make_ham(tmp_path / "ham", per_class=2)
    edit(root)
    return f"ham10000:{root}"


def _rewrite_csv(path: Path, change) -> None:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    change(rows)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def bad_missing_column(tmp):
    return _ham_with(tmp, lambda r: _rewrite_csv(r / "HAM10000_metadata.csv", lambda rows: [row.pop(2) for row in rows]))


def bad_unknown_dx(tmp):
    return _ham_with(tmp, lambda r: _rewrite_csv(r / "HAM10000_metadata.csv", lambda rows: rows[2].__setitem__(2, "xyz")))


def bad_duplicate_image(tmp):
    return _ham_with(tmp, lambda r: _rewrite_csv(r / "HAM10000_metadata.csv", lambda rows: rows.append(rows[1])))


def bad_missing_image(tmp):
    return _ham_with(tmp, lambda r: next(r.rglob("ISIC_03001.jpg")).unlink())


def bad_missing_csv(tmp):
    return _ham_with(tmp, lambda r: (r / "HAM10000_metadata.csv").unlink())


def bad_header_only(tmp):
    return _ham_with(tmp, lambda r: _rewrite_csv(r / "HAM10000_metadata.csv", lambda rows: rows.__delitem__(slice(1, None))))


def bad_kaggle_level(tmp):
    root = make_kaggle(tmp / "dr")
    _rewrite_csv(root / "trainLabels.csv", lambda rows: rows[3].__setitem__(1, "7"))
    return f"kaggle-dr:{root}"


def bad_kaggle_too_few_patients(tmp):
    root = make_kaggle(tmp / "dr")
    _rewrite_csv(root / "trainLabels.csv", lambda rows: rows.__delitem__(slice(5, None)))
    return f"kaggle-dr:{root}"


def bad_chest_column(tmp):
    root = make_chest(tmp / "cxr", patients=3)
    _rewrite_csv(root / "Data_Entry_2017.csv", lambda rows: rows[0].__setitem__(3, "Patient"))
    return f"chestxray14:{root}"


def bad_folder_empty(tmp):
    (tmp / "empty").mkdir()
    return f"folder:{tmp / 'empty'}"


def bad_folder_class_empty(tmp):
    root = make_folder(tmp / "f")
    (root / "zzz").mkdir()
    return f"folder:{root}"


def bad_folder_one_class(tmp):
    return f"folder:{make_folder(tmp / 'f', classes=('only',))}"


def bad_npz_keys(tmp):
    return f"medmnist:{make_npz(tmp / 'x.npz', drop='val_labels')}"


def bad_npz_label_range(tmp):
    return f"medmnist:{make_npz(tmp / 'retinamnist.npz', classes=9)}"


def bad_npz_multilabel(tmp):
    path = tmp / "chestmnist.npz"
    np.savez(path, **{f"{s}_{p}": (np.zeros((4, 28, 28), np.uint8) if p == "images" else np.zeros((4, 14), np.uint8))
                      for s in ("train", "val", "test") for p in ("images", "labels")})
    return f"medmnist:{path}"


def bad_npz_volume(tmp):
    path = tmp / "organmnist3d.npz"
    np.savez(path, **{f"{s}_{p}": (np.zeros((4, 28, 28, 28), np.uint8) if p == "images" else np.zeros((4, 1), np.uint8))
                      for s in ("train", "val", "test") for p in ("images", "labels")})
    return f"medmnist:{path}"


def bad_npz_not_zip(tmp):
    (tmp / "broken.npz").write_bytes(b"not a zip archive")
    return f"medmnist:{tmp / 'broken.npz'}"


BAD_INPUTS = [
    ("missing column", bad_missing_column, r"HAM10000_metadata\.csv: expected columns lesion_id, image_id, dx, missing dx"),
    ("unknown dx", bad_unknown_dx, r"HAM10000_metadata\.csv: line 3: expected dx one of akiec, .*got 'xyz'"),
    ("duplicate image id", bad_duplicate_image, r"expected each 'image_id' once, got 'ISIC_00000' again"),
    ("missing image", bad_missing_image, r"HAM10000_metadata\.csv: expected an image file <image_id>\.jpg .* 1 of 14 missing: ISIC_03001\.jpg"),
    ("missing csv", bad_missing_csv, r"HAM10000_metadata\.csv: expected a CSV file with columns .*got no such file"),
    ("header only", bad_header_only, r"expected at least one data row"),
    ("kaggle level", bad_kaggle_level, r"trainLabels\.csv: line 4: expected level 0\.\.4, got '7'"),
    ("too few patients", bad_kaggle_too_few_patients, r"trainLabels\.csv: cannot split .*expected at least 3 distinct groups"),
    ("chest column", bad_chest_column, r"Data_Entry_2017\.csv: expected columns .*missing Patient ID"),
    ("empty folder", bad_folder_empty, r"empty: expected one sub-folder per class, got no sub-folders"),
    ("empty class folder", bad_folder_class_empty, r"zzz: expected images .* for class 'zzz', got none"),
    ("one class folder", bad_folder_one_class, r"expected at least 2 class sub-folders, got 1"),
    ("npz keys", bad_npz_keys, r"x\.npz: expected MedMNIST keys .*missing val_labels"),
    ("npz label range", bad_npz_label_range, r"retinamnist\.npz: expected train_labels in 0\.\.4 \(retinamnist\), got 0\.\.8"),
    ("npz multi-label", bad_npz_multilabel, r"chestmnist\.npz: expected single-label .*multi-label"),
    ("npz volume", bad_npz_volume, r"organmnist3d\.npz: expected 2D train_images .*3D MedMNIST volumes"),
    ("npz not a zip", bad_npz_not_zip, r"broken\.npz: expected a MedMNIST \.npz archive, got an unreadable file"),
    ("npz missing", lambda tmp: f"medmnist:{tmp / 'nope.npz'}", r"nope\.npz: expected a MedMNIST \.npz file .*got no such file"),
    ("unknown kind", lambda tmp: "nifti:/data",
     r"expected a dataset spec KIND:PATH with KIND one of medmnist, ham10000, kaggle-dr, chestxray14, folder, dicom, synthetic, "
     r"got 'nifti:/data'"),
    ("missing directory", lambda tmp: f"ham10000:{tmp / 'absent'}", r"absent: expected a directory for .*got no such directory"),
    ("no directory given", lambda tmp: "folder:", r"expected folder:DIR naming a directory"),
    ("unknown medmnist name", lambda tmp: "medmnist:fakemnist", r"expected a 2D MedMNIST name \(bloodmnist, .*got 'fakemnist'"),
    ("multi-label medmnist name", lambda tmp: "medmnist:chestmnist", r"chestmnist: expected single-label .*multi-label"),
    ("bad medmnist size", lambda tmp: "medmnist:dermamnist@32", r"expected a MedMNIST size in \(28, 64, 128, 224\), got 32"),
    ("bad synthetic count", lambda tmp: "synthetic:lots", r"expected synthetic or synthetic:N"),
    ("tiny synthetic", lambda tmp: "synthetic:3", r"expected synthetic:N with N >= 9, got 3"),
]


@pytest.mark.parametrize("make_spec, message", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_dataset_input_fails_fast(tmp_path, make_spec, message):
    spec = make_spec(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec, cache_dir=tmp_path / "cache")


def test_split_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="expected exactly one of images or paths"):
        Split(ids=("a",), labels=np.zeros(1, np.int64), groups=("a",))
    with pytest.raises(ValueError, match="expected 2 labels and groups"):
        Split(ids=("a", "b"), labels=np.zeros(1, np.int64), groups=("a", "b"), paths=("x", "y"))


# --- medmnist:NAME downloads, over a real (local) HTTP server --------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "zenodo"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _publish(monkeypatch, served: Path, base_url: str, md5: str | None = None) -> None:
    npz = make_npz(served / "retinamnist_64.npz", grey=False)
    digest = md5 or hashlib.md5(npz.read_bytes()).hexdigest()
    monkeypatch.setattr(medmnist_download, "RECORD_URL", base_url)
    monkeypatch.setitem(INFO, "retinamnist", MedMnistInfo("retinamnist", INFO["retinamnist"].class_names, {64: digest}))


def test_medmnist_name_downloads_checks_md5_and_caches(tmp_path, monkeypatch, file_server):
    served, base_url = file_server
    _publish(monkeypatch, served, base_url)
    cache = tmp_path / "cache"
    data = load_dataset("medmnist:retinamnist@64", cache_dir=cache)
    assert len(data.train) == 20 and data.default_task == "retina"
    assert (cache / "retinamnist_64.npz").is_file() and not list(cache.glob("*.part"))
    (served / "retinamnist_64.npz").unlink()  # the cached copy is used from now on
    assert load_dataset("medmnist:retinamnist@64", cache_dir=cache).fingerprint == data.fingerprint


def test_medmnist_cache_dir_from_environment(tmp_path, monkeypatch, file_server):
    served, base_url = file_server
    _publish(monkeypatch, served, base_url)
    monkeypatch.setenv("MEDROBUST_CACHE_DIR", str(tmp_path / "env-cache"))
    load_dataset("medmnist:retinamnist@64")
    assert (tmp_path / "env-cache" / "retinamnist_64.npz").is_file()


def test_medmnist_md5_mismatch_discards_the_download(tmp_path, monkeypatch, file_server):
    served, base_url = file_server
    _publish(monkeypatch, served, base_url, md5="0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="expected MD5 0{32}, got [0-9a-f]{32}; the download was discarded"):
        load_dataset("medmnist:retinamnist@64", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_medmnist_without_network_says_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setattr(medmnist_download, "RECORD_URL", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(DatasetError, match=r"download could not be made .*pass a local copy as medmnist:FILE\.npz"):
        load_dataset("medmnist:dermamnist@64", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_medmnist_table_covers_the_2d_datasets():
    assert {"dermamnist", "retinamnist", "pneumoniamnist", "pathmnist", "bloodmnist", "organamnist"} <= set(INFO)
    assert INFO["retinamnist"].md5[28] == "bd4c0672f1bba3e3a89f0e4e876791e4"  # matches ../shared/data
    assert INFO["dermamnist"].url(64) == "https://zenodo.org/records/10519652/files/dermamnist_64.npz?download=1"
    assert all(len(md5) == 32 for info in INFO.values() for md5 in info.md5.values())
