"""DICOM files for the tests, written with pydicom in memory: radiographs, files full of identifiers,
files without pixels, files too long to decode, and a check that no identifier leaked into a text."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# A value in every patient and study field, each one findable in any text. Dates are also looked
# for as YYYY-MM-DD and the names with their parts apart.
IDENTIFIERS: dict[str, str] = {
    "PatientName": "Zyxwick^Quentin^Marlo",
    "PatientID": "PID-8731-ZQX",
    "IssuerOfPatientID": "ISSUER-QX41",
    "OtherPatientIDs": "OPID-4417-QX",
    "PatientBirthDate": "19230417",
    "PatientBirthTime": "031415",
    "PatientAge": "097Y",
    "PatientAddress": "12 Qxmarker Lane, Oldtown",
    "PatientTelephoneNumbers": "555-0199-31",
    "PatientMotherBirthName": "Vexmother^Ada",
    "EthnicGroup": "ETHNIC-QX",
    "PatientComments": "comment qxcomment",
    "StudyDate": "20190305",
    "SeriesDate": "20190306",
    "AcquisitionDate": "20190307",
    "ContentDate": "20190308",
    "StudyTime": "101112",
    "AccessionNumber": "ACC77341QX",
    "InstitutionName": "St Qxolaf Hospital",
    "InstitutionAddress": "1 Qxhospital Road",
    "InstitutionalDepartmentName": "Qxradiology",
    "ReferringPhysicianName": "Referrer^Qxdoctor",
    "PerformingPhysicianName": "Performer^Qxtech",
    "OperatorsName": "Operator^Qxquill",
    "StationName": "STATION-QX7",
    "StudyID": "STUDY9931QX",
    "StudyDescription": "Chest qxstudy",
    "SeriesDescription": "PA qxseries",
    "RequestingPhysician": "Requester^Qxreq",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.7716651",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.7716652",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.7716653",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.7716654",
    "DeviceSerialNumber": "SERIAL-QX0042",
}


def _needles() -> list[str]:
    needles = set()
    for value in IDENTIFIERS.values():
        needles.add(value)
        if re.fullmatch(r"\d{8}", value):
            needles.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        needles.update(part for part in re.split(r"[\^ ,]+", value) if len(part) >= 5)
    return sorted(needles)


NEEDLES = _needles()


def leaks(text: str) -> list[str]:
    """The identifiers (or their parts) found in `text`: empty when nothing of the patient leaked."""
    return [needle for needle in NEEDLES if needle.lower() in text.lower()]


def dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str = "DX",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    identifiers: bool = False,
    multiframe: bool = False,
) -> Dataset:
    """A Secondary Capture data set holding `pixels` ([rows, cols], [rows, cols, 3] or, with
    `multiframe`, [frames, rows, cols]); None leaves the pixel data out."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    if identifiers:
        ds.SpecificCharacterSet = "ISO_IR 100"
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored or 8 * pixels.dtype.itemsize)
        if multiframe and "NumberOfFrames" not in ds:
            ds.NumberOfFrames = pixels.shape[0]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    return ds


def encode(ds: Dataset, *, part10: bool = True) -> bytes:
    """The data set as a Part 10 file (preamble, 'DICM', meta header) or, without `part10`, as an
    old ACR-NEMA style stream: the data set alone, implicit VR little endian."""
    buffer = io.BytesIO()
    if part10:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        bare = Dataset()
        bare.update(ds)
        pydicom.dcmwrite(buffer, bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def radiograph_12bit(rows: int = 48, columns: int = 64) -> np.ndarray:
    """uint16 stored values spanning 12 bits: a ramp across the columns, rows shifted."""
    y, x = np.mgrid[0:rows, 0:columns]
    return ((x * 4095 // (columns - 1) + y * 7) % 4096).astype(np.uint16)


def grey_ramp(rows: int = 40, columns: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns]
    return ((x * 5 + y * 3) % 256).astype(np.uint8)


def chest_xray(*, identifiers: bool = True, rows: int = 48, columns: int = 64) -> bytes:
    """A 12-bit MONOCHROME1 radiograph with Rescale and a window, as a PACS exports one."""
    return encode(dataset(
        radiograph_12bit(rows, columns), photometric="MONOCHROME1", bits_stored=12, modality="CR",
        rescale=(2.0, -1000.0), window=(1000.0, 2001.0), identifiers=identifiers,
    ))


def without_pixels(*, identifiers: bool = True) -> bytes:
    """A Part 10 file with a patient and a study but no pixel data (as a report or structure set)."""
    return encode(dataset(None, modality="SR", identifiers=identifiers))


def long_multiframe(frames: int, rows: int = 64, columns: int = 64, *, identifiers: bool = True) -> bytes:
    """A header claiming `frames` frames of rows x columns, with one frame of data: decoding it would
    fail, so only a check made before decoding can answer it."""
    ds = dataset(np.zeros((1, rows, columns), np.uint8), identifiers=identifiers, multiframe=True)
    ds.NumberOfFrames = frames
    return encode(ds)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
