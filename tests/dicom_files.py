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


# --- crafted compressed files: codestreams whose own header disagrees with the DICOM's -------------


def compressed(frame: bytes, syntax: str, *, rows: int, columns: int, samples: int = 1, bits: int = 8) -> bytes:
    """A Part 10 file whose one frame is `frame`, encapsulated under `syntax`, with a header of rows x columns."""
    from pydicom.encaps import encapsulate

    shape = (rows, columns) if samples == 1 else (rows, columns, samples)
    ds = dataset(np.zeros(shape, np.uint8 if bits == 8 else np.uint16), photometric="MONOCHROME2" if samples == 1 else "RGB")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return encode(ds)


def jpeg_frame(rows: int = 256, columns: int = 256) -> bytes:
    """A real baseline JPEG of a grey ramp (Pillow's encoder)."""
    from PIL import Image

    y, x = np.mgrid[0:rows, 0:columns]
    buffer = io.BytesIO()
    Image.fromarray(((x + y) % 256).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def with_jpeg_size(frame: bytes, rows: int, columns: int) -> bytes:
    """`frame` with its SOF0 (or JPEG-LS SOF55) marker patched to declare rows x columns."""
    for marker in (b"\xff\xc0", b"\xff\xf7"):
        at = frame.find(marker)
        if at > 0:
            return frame[: at + 5] + rows.to_bytes(2, "big") + columns.to_bytes(2, "big") + frame[at + 9 :]
    raise ValueError("expected a JPEG frame with an SOF0 or SOF55 marker")


def j2k_frame(rows: int = 256, columns: int = 256) -> bytes:
    """A real lossless JPEG 2000 codestream of a grey ramp (openjpeg through imagecodecs)."""
    import imagecodecs

    y, x = np.mgrid[0:rows, 0:columns]
    return imagecodecs.jpeg2k_encode(((x + y) % 256).astype(np.uint8), level=0, codecformat=imagecodecs.JPEG2K.CODEC.J2K)


def with_j2k_size(frame: bytes, rows: int, columns: int) -> bytes:
    """`frame` with its SIZ marker's Xsiz and Ysiz patched (offsets left at 0)."""
    at = frame.index(b"\xff\x51") + 2 + 2 + 2  # marker, Lsiz, Rsiz
    return frame[:at] + columns.to_bytes(4, "big") + rows.to_bytes(4, "big") + frame[at + 8 :]


def deflate_bomb(padding: int) -> bytes:
    """A Deflated Explicit VR Little Endian file: a 64 x 64 image, then `padding` zero bytes of Data Set
    Trailing Padding (FFFC,FFFC), deflated as it is made, so the bomb never exists inflated here."""
    import zlib

    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dataset(grey_ramp(64, 64))
    body = io.BytesIO()
    pydicom.dcmwrite(body, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    meta = io.BytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(body.getvalue())]
    if padding:
        parts.append(deflater.compress(b"\xfc\xff\xfc\xffOB\x00\x00" + padding.to_bytes(4, "little")))
        chunk = bytes(16 << 20)
        for start in range(0, padding, len(chunk)):
            parts.append(deflater.compress(chunk[: min(len(chunk), padding - start)]))
    parts.append(deflater.flush())
    return meta.getvalue() + b"".join(parts)


# --- other compressed containers the decode path reads ----------------------------------------------


def _zeros_deflated(count: int, *, raw: bool = False) -> bytes:
    import zlib

    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    chunk = bytes(16 << 20)
    parts = [deflater.compress(chunk[: min(len(chunk), count - start)]) for start in range(0, count, len(chunk))]
    return b"".join(parts) + deflater.flush()


def png_with_chunk(kind: bytes, inflated: int) -> bytes:
    """A 64 x 64 PNG carrying a zTXt or iCCP chunk whose compressed text inflates to `inflated` bytes."""
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grey_ramp(64, 64)).save(buffer, "PNG")
    png = buffer.getvalue()
    payload = (b"Comment\x00\x00" if kind == b"zTXt" else b"icc\x00\x00") + _zeros_deflated(inflated)
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def tiff_with_deflated_strip(inflated: int) -> bytes:
    """A 64 x 64 grey TIFF whose one deflated strip inflates to `inflated` bytes (the image needs 4,096)."""
    import struct

    strip = _zeros_deflated(inflated)
    tags = [(256, 3, 64), (257, 3, 64), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, None), (277, 3, 1),
            (278, 3, 64), (279, 4, len(strip))]
    strip_at = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = strip_at if value is None else value
        out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    return out + struct.pack("<I", 0) + strip
