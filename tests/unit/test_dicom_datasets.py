"""DICOM in the datasets and the audit set: `dicom:DIR`, `.dcm` in `folder:` and `chestxray14:`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from audit.auditset import audit_set_fingerprint, draw_audit_set
from tests import dicom_files as files
from training.dataset_types import DatasetError
from training.datasets import load_dataset, load_images, load_uint8

CLASSES = ("normal", "pneumothorax")


def patient_id(p: int) -> str:
    return f"MRN{p:04d}QXZ"


def make_dicom_dir(root: Path, *, patients: int = 8) -> tuple[Path, dict[str, str]]:
    """Sub-folder classes; each patient has an image in both, one of them without an extension as
    PACS exports name files. Returns the folder and each file's patient (id -> PatientID)."""
    patient_of = {}
    for p in range(patients):
        for c, name in enumerate(CLASSES):
            ds = files.dataset(files.grey_ramp() // 2 + 40 * c + p, identifiers=True)
            ds.PatientID, ds.PatientName = patient_id(p), f"Qxname{p}^Qxgiven"
            rel = f"{name}/series{p}/img{p:02d}.dcm" if c == 0 else f"{name}/IM{p:04d}"
            files.write(root / rel, files.encode(ds))
            patient_of[rel] = patient_id(p)
    # Neither an image nor a sample: the index of a DICOM media, and a note.
    files.write(root / "normal" / "DICOMDIR", files.without_pixels())
    (root / "normal" / "notes.txt").write_text("not an image\n")
    return root, patient_of


def all_ids(data) -> list[str]:
    return [i for split in ("train", "val", "test") for i in data.split(split).ids]


def by_listing(data, root: Path) -> dict[str, str]:
    """Each sample's id -> its path under `root`: ids number the files in the listing's order."""
    return {i: str(Path(path).relative_to(root)) for split in ("train", "val", "test")
            for i, path in zip(data.split(split).ids, data.split(split).paths)}


def test_dicom_dir_reads_classes_from_sub_folders_and_splits_by_patient(tmp_path):
    root, patient_of = make_dicom_dir(tmp_path / "Chest Films")
    data = load_dataset(f"dicom:{root}", seed=3)
    assert (data.kind, data.class_names, data.default_task) == ("dicom", CLASSES, "chest_films")
    path_of = by_listing(data, root)
    assert sorted(all_ids(data)) == [f"dicom/{i:05d}" for i in range(len(patient_of))]
    assert sorted(path_of.values()) == sorted(patient_of)
    for split in ("train", "val", "test"):
        for sample, label in zip(data.split(split).ids, data.split(split).labels):
            assert CLASSES[label] == path_of[sample].split("/")[0]
    sides = [{patient_of[path_of[i]] for i in data.split(s).ids} for s in ("train", "val", "test")]
    assert all(len(side) > 0 for side in sides)
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    again = load_dataset(f"dicom:{root}", seed=3)
    assert again.fingerprint == data.fingerprint and again.test.ids == data.test.ids


def test_dicom_dir_holds_no_patient_id(tmp_path):
    root, _ = make_dicom_dir(tmp_path / "cxr")
    data = load_dataset(f"dicom:{root}")
    held = repr(data)  # ids, labels, groups, paths, fingerprint
    assert not [p for p in range(8) if patient_id(p) in held or f"Qxname{p}" in held]
    assert files.leaks(held) == []
    groups = {g for s in ("train", "val", "test") for g in data.split(s).groups}
    assert len(groups) == 8 and all(g.startswith("patient:") and len(g) == len("patient:") + 64 for g in groups)


def test_files_without_a_patient_id_are_their_own_group(tmp_path):
    root = tmp_path / "anon"
    for c, name in enumerate(CLASSES):
        for i in range(4):
            files.write(root / name / f"{i}.dcm", files.encode(files.dataset(files.grey_ramp() + c)))
    data = load_dataset(f"dicom:{root}")
    assert sorted(g for s in ("train", "val", "test") for g in data.split(s).groups) == [
        f"file:dicom/{i:05d}" for i in range(8)
    ]


def test_dicom_dir_with_a_labels_csv(tmp_path):
    root, patient_of = make_dicom_dir(tmp_path / "cxr")
    ids = sorted(patient_of)
    rows = [
        # a path under the folder, or a file name found anywhere below it
        [rel if i % 2 else rel.rsplit("/", 1)[-1], "effusion" if i % 3 == 0 else "clear"]
        for i, rel in enumerate(ids)
    ]
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file", "label"], *rows])
    data = load_dataset(f"dicom:{root}")
    assert data.class_names == ("clear", "effusion")
    path_of = by_listing(data, root)
    labels = {path_of[i]: data.class_names[label] for s in ("train", "val", "test") for i, label in zip(data.split(s).ids, data.split(s).labels)}
    assert labels == {rel: ("effusion" if i % 3 == 0 else "clear") for i, rel in enumerate(ids)}


def test_dicom_images_load_through_the_shared_decode_path(tmp_path):
    root, _ = make_dicom_dir(tmp_path / "cxr")
    data = load_dataset(f"dicom:{root}")
    images = load_uint8(data.train, 16)
    assert images.shape == (len(data.train), 16, 16, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all() and images.max() > images.min()


def test_an_audit_set_drawn_from_dicom_is_fingerprinted_like_any_other(tmp_path):
    root, _ = make_dicom_dir(tmp_path / "cxr", patients=10)
    first, images = draw_audit_set(load_dataset(f"dicom:{root}"), n=4, seed=0, image_size=8)
    second, _ = draw_audit_set(load_dataset(f"dicom:{root}"), n=4, seed=0, image_size=8)
    assert first == second and images.shape == (len(first.sample_ids), 8, 8, 3)
    assert first.fingerprint == audit_set_fingerprint(first.dataset_fingerprint, 8, first.sample_ids, np.asarray(first.labels))
    assert files.leaks(repr(first)) == [] and not [p for p in range(10) if patient_id(p) in repr(first)]


def test_folder_reads_dcm_beside_png(tmp_path):
    from PIL import Image

    root = tmp_path / "mixed"
    for c, name in enumerate(CLASSES):
        for i in range(3):
            files.write(root / name / f"d{i}.dcm", files.encode(files.dataset(files.grey_ramp() + c, identifiers=True)))
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(files.grey_ramp() + c).save(root / name / f"p{i}.png")
    data = load_dataset(f"folder:{root}")
    assert sorted(all_ids(data)) == sorted(f"{n}/{k}{i}.{e}" for n in CLASSES for i in range(3) for k, e in (("d", "dcm"), ("p", "png")))
    images = load_images(data.train, 8)
    assert images.shape == (len(data.train), 8, 8, 3)


def test_png_and_dcm_of_the_same_pixels_load_the_same(tmp_path):
    from PIL import Image

    ramp = files.grey_ramp()
    Image.fromarray(ramp).save(tmp_path / "a.png")
    # An 8-bit grey DICOM with the full-range window shows its stored values unchanged.
    files.write(tmp_path / "a.dcm", files.encode(files.dataset(ramp, window=(128.0, 256.0))))
    from training.contract.imaging import decode_image_file

    np.testing.assert_array_equal(decode_image_file(tmp_path / "a.dcm"), decode_image_file(tmp_path / "a.png"))


def test_chestxray14_reads_a_dicom_export_named_like_the_index(tmp_path):
    root = tmp_path / "cxr"
    rows = []
    for p in range(1, 13):
        for k in range(2):
            name = f"{p:08d}_{k:03d}"
            rows.append([f"{name}.png", "Pneumothorax" if (p + k) % 4 == 0 else "No Finding", str(p)])
            if k == 0:
                files.write(root / "images" / f"{name}.dcm", files.encode(files.dataset(files.grey_ramp(), identifiers=True)))
            else:
                from PIL import Image

                (root / "images").mkdir(parents=True, exist_ok=True)
                Image.fromarray(files.grey_ramp()).save(root / "images" / f"{name}.png")
    with open(root / "Data_Entry_2017.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["Image Index", "Finding Labels", "Patient ID"], *rows])
    data = load_dataset(f"chestxray14:{root}")
    paths = [p for s in ("train", "val", "test") for p in data.split(s).paths]
    assert sum(p.endswith(".dcm") for p in paths) == 12 and sum(p.endswith(".png") for p in paths) == 12
    assert "00000001_000.png" in all_ids(data)  # the ids stay the index's names
    assert load_uint8(data.test, 8).shape == (len(data.test), 8, 8, 3)


def _one_class(tmp: Path) -> str:
    files.write(tmp / "d" / "only" / "a.dcm", files.encode(files.dataset(files.grey_ramp())))
    return f"dicom:{tmp / 'd'}"


def _empty_class(tmp: Path) -> str:
    files.write(tmp / "d" / "a" / "x.dcm", files.encode(files.dataset(files.grey_ramp())))
    (tmp / "d" / "b").mkdir()
    (tmp / "d" / "b" / "readme.txt").write_text("no images\n")
    return f"dicom:{tmp / 'd'}"


def _unreadable(tmp: Path) -> str:
    files.write(tmp / "d" / "a" / "x.dcm", files.encode(files.dataset(files.grey_ramp())))
    files.write(tmp / "d" / "b" / "broken.dcm", b"\x00" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00\xff\xff")
    return f"dicom:{tmp / 'd'}"


def _csv_missing_file(tmp: Path) -> str:
    root = tmp / "d"
    files.write(root / "x.dcm", files.encode(files.dataset(files.grey_ramp())))
    (root / "labels.csv").write_text("file,label\nx.dcm,a\ngone.dcm,b\n")
    return f"dicom:{root}"


def _csv_twice(tmp: Path) -> str:
    root = tmp / "d"
    files.write(root / "s" / "x.dcm", files.encode(files.dataset(files.grey_ramp())))
    (root / "labels.csv").write_text("file,label\nx.dcm,a\ns/x.dcm,b\n")
    return f"dicom:{root}"


BAD = [
    ("no classes", lambda tmp: (tmp / "d").mkdir() or f"dicom:{tmp / 'd'}", r"expected labels\.csv or one sub-folder per class, got neither"),
    ("one class", _one_class, r"expected at least 2 classes, got 1 \(only\)"),
    ("a class without files", _empty_class, r"b: expected DICOM files .* for class 'b', got none"),
    ("an unreadable file", _unreadable, r"dicom/\d{5}: expected a DICOM file, got one pydicom cannot parse"),
    ("csv names a missing file", _csv_missing_file, r"labels\.csv: expected an image file named in column 'file' .* gone\.dcm"),
    ("csv names a file twice", _csv_twice, r"labels\.csv: expected each file once, got s/x\.dcm"),
]


@pytest.mark.parametrize("make, message", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_dicom_dirs_fail_fast_saying_why(tmp_path, make, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(make(tmp_path))


def test_files_named_after_the_patient_leave_no_path_in_ids_groups_or_errors(tmp_path):
    """PACS exports are often named after the patient: nothing that leaves the dataset (ids, which the
    audit store and its reports keep; groups; a decode error's message) may carry a path component."""
    root = tmp_path / "export"
    for c, name in enumerate(CLASSES):
        for p in range(3):
            ds = files.dataset(files.grey_ramp() + c, identifiers=False)  # no PatientID: grouped per file
            files.write(root / name / f"PHIXDIR_DOE^JANE_{p}" / f"PHIXFILE_Jane_Doe_{p}.dcm", files.encode(ds))
    data = load_dataset(f"dicom:{root}")
    kept = [*all_ids(data), *(g for s in ("train", "val", "test") for g in data.split(s).groups)]
    assert kept and not [k for k in kept if "PHIX" in k or "Jane" in k or "DOE" in k]
    audit_set, _ = draw_audit_set(data, n=4, seed=0, image_size=8)
    assert "PHIX" not in repr(audit_set) and "Jane" not in repr(audit_set)
    broken = data.test.paths[0]
    Path(broken).write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(Exception) as caught:
        load_uint8(data.test, 8)
    assert data.test.ids[0] in str(caught.value) and "PHIX" not in str(caught.value) and "Jane" not in str(caught.value)
