"""DICOM bytes -> the same 8-bit picture every other format becomes, and nothing of the patient.

:mod:`training.contract.imaging` sends DICOM here (:func:`is_dicom` sniffs it), so training,
serving and the audit see the same pixels. pydicom parses the file; pylibjpeg and its libjpeg,
openjpeg and RLE plugins decode compressed transfer syntaxes. Grey levels follow the standard's
pipeline with pydicom's own functions: Modality LUT (Rescale Slope and Intercept), then the VOI
LUT (the first Window Center/Width, else the VOI LUT Sequence, else a percentile window over the
stored values), then MONOCHROME1 inverted; colour becomes RGB.

No header value leaves this module except what :class:`DicomInfo` holds (modality, photometric
interpretation, frame, window) and the geometry and transfer syntax an error must name. pydicom's
own messages can quote any header value, so they are never passed on: errors name the exception's
type only, pydicom's warnings are silenced while a header is read and its log does not propagate.

pydicom is imported on the first DICOM, not at import: the web service imports this module cheaply.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from training.contract import codestream
from training.contract.confined import Limits, run_confined
from training.contract.image_errors import (
    ImageError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    NoPixelData,
    UnsupportedImage,
)
from training.contract.warnings_lock import WARNINGS_LOCK

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

MAGIC_OFFSET = 128  # a Part 10 file: a 128-byte preamble, then "DICM", then the meta header
MAGIC = b"DICM"
PERCENTILES = (0.5, 99.5)  # the window used when the header gives none

GREY = ("MONOCHROME1", "MONOCHROME2")
# JPEG 2000's own colour transforms are undone inside the codec: its output is already RGB.
DECODED_AS_RGB = ("RGB", "YBR_RCT", "YBR_ICT")
CONVERTED_TO_RGB = ("YBR_FULL", "YBR_FULL_422")
PALETTE = "PALETTE COLOR"
PHOTOMETRIC = (*GREY, *DECODED_AS_RGB, *CONVERTED_TO_RGB, PALETTE)
# Defined terms (PS3.3 C.7.6.3.1.2 and C.7.3.1.1.1). Only a header value in these lists is ever
# repeated, in an answer or a message: a free-text field could hold a name.
_KNOWN_PHOTOMETRIC = frozenset({*PHOTOMETRIC, "ARGB", "CMYK", "HSV", "YBR_PARTIAL_420", "YBR_PARTIAL_422"})
MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO "
    "IOL IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS "
    "PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM "
    "SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC".split()
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# Grey levels are computed a strip of rows at a time, so a large radiograph never exists as a
# whole float64 copy; the percentile window is estimated from at most about this many pixels.
_STRIP_ROWS = 256
_SAMPLE_PIXELS = 1 << 20
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the data set is one raw deflate stream
_INFLATE_CHUNK = 1 << 20
# A compressed frame is decoded in a child under a memory ceiling (see confined.py) and this time limit:
# the largest honest frame (50 megapixels of JPEG 2000) decodes in a few seconds on one core.
DECODE_SECONDS = 30.0
# Explicit VR elements whose length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2); the rest take 2.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass(frozen=True)
class Window:
    """How stored values became grey levels, in modality units (after Rescale Slope/Intercept)."""

    source: str  # "window": the first Window Center/Width; "voi_lut": the VOI LUT Sequence; "percentile"
    center: float | None  # None for a VOI LUT, which is a table, not a window
    width: float | None


@dataclass(frozen=True)
class DicomInfo:
    """All an answer may say about a DICOM upload; nothing here names or dates a patient."""

    modality: str | None  # a defined term (CR, DX, CT, ...); None when the file has another value
    photometric_interpretation: str
    frame: int  # the frame decoded, counted from 0
    frames: int
    window: Window | None  # None for colour images


@dataclass(frozen=True)
class DicomPicture:
    """One frame as 8-bit pixels, and what may be said of it."""

    pixels: np.ndarray  # uint8 [rows, columns] (grey) or [rows, columns, 3] (RGB)
    info: DicomInfo


def has_part10_marker(data: bytes) -> bool:
    """'DICM' after the 128-byte preamble: a DICOM Part 10 file."""
    return data[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


def _headerless(data: bytes) -> bool:
    # Old ACR-NEMA style files start straight with the data set, whose first element is in group
    # 0008 (or the 0002 meta group, always little endian). No accepted image format starts so.
    if len(data) < 8:
        return False
    order: Literal["little", "big"]
    if data[:2] in (b"\x08\x00", b"\x02\x00"):
        order = "little"
    elif data[:2] == b"\x00\x08":
        order = "big"
    else:
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    length = int.from_bytes(data[4:8], order)  # implicit VR: a length that fits
    return length == 0xFFFFFFFF or length <= len(data) - 8


def is_dicom(data: bytes) -> bool:
    """Whether `data` is DICOM: a Part 10 file, or a headerless (ACR-NEMA style) data set."""
    return has_part10_marker(data) or _headerless(data)


@lru_cache(maxsize=1)
def _pydicom() -> ModuleType:
    import pydicom
    import pydicom.config

    # We read a handful of image attributes and check them ourselves. pydicom's value checks
    # would only warn, quoting the offending value (a name, a date) in the warning and its log.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # pydicom's log lines describe the file being read and may quote its header. pydicom gives its
    # logger a NullHandler; not propagating keeps them out of the process's log handlers too.
    logging.getLogger("pydicom").propagate = False
    return pydicom


def _parse(source: io.BytesIO | str, *, force: bool, **options: Any) -> Dataset:
    """pydicom's dataset, every top-level element converted while pydicom's warnings are off."""
    pydicom = _pydicom()
    with WARNINGS_LOCK, warnings.catch_warnings():
        # Odd but readable files (a wrong VR, an odd character set) make pydicom warn; reading
        # them is the point, and the warnings may quote the header.
        warnings.simplefilter("ignore")
        ds: Dataset = pydicom.dcmread(source, force=force, **options)
        for _ in ds:  # converts raw elements now, under the filter, rather than on first use
            pass
    return ds


def _uid_text(uid: str) -> str:
    if not _UID.fullmatch(uid) or len(uid) > 64:
        return "a value that is not a UID"
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _photometric_text(value: str) -> str:
    return value if value in _KNOWN_PHOTOMETRIC else "a value the standard does not define"


def _whole(ds: Dataset, keyword: str, described: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise InvalidImage(f"expected a DICOM image with {described}, got a file without it")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidImage(f"expected {described} to be a whole number, got a value that is not") from None
    if number < 1:
        raise InvalidImage(f"expected {described} to be at least 1, got {number}")
    return number


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax UID; for a headerless file, the encoding pydicom found."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    uid = meta.get("TransferSyntaxUID")
    if uid:
        return UID(str(uid))
    implicit, little = ds.original_encoding
    if implicit is None or little is None or (implicit and not little):
        raise InvalidImage(
            "expected a DICOM file with a transfer syntax, or a headerless data set in a standard "
            "encoding, got neither"
        )
    # Best effort for ACR-NEMA style files: the encoding the data set was read in is its syntax.
    uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    meta.TransferSyntaxUID = uid
    return uid


def _check_decodable(uid: UID) -> None:
    from pydicom.pixels import get_decoder

    if not (_UID.fullmatch(uid) and uid.is_transfer_syntax):
        raise UnsupportedImage(f"expected a DICOM transfer syntax, got {_uid_text(uid)}")
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UnsupportedImage(
            f"expected a transfer syntax with an installed decoder (uncompressed, deflated, RLE, JPEG, "
            f"JPEG-LS or JPEG 2000), got {_uid_text(uid)}, which no installed decoder reads"
        )


def _first(value: Any) -> Any:
    from pydicom.multival import MultiValue

    # Window Center/Width may hold several views; the first is the one to show.
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def _header_window(ds: Dataset) -> Window | None:
    """The first Window Center/Width, when the header holds one the standard allows."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    try:
        center, width = float(_first(center)), float(_first(width))
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    # A window pydicom would refuse (an unknown function; LINEAR needs a width of at least 1,
    # the others a positive one) is ignored, as viewers do.
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or not (math.isfinite(center) and math.isfinite(width)):
        return None
    if width < 1 if function == "LINEAR" else width <= 0:
        return None
    return Window(source="window", center=center, width=width)


def _lut_inputs(ds: Dataset) -> np.ndarray | None:
    """Every input value the first VOI LUT maps, when the header holds a usable one."""
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    descriptor = sequence[0].get("LUTDescriptor")
    if descriptor is None or sequence[0].get("LUTData") is None:
        return None
    entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    return np.arange(first, first + entries, dtype=np.int64)


def _to_eight(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`low` -> 0 and `high` -> 255, linearly, rounded and clipped."""
    if high == low:  # one value everywhere: one grey
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _grey(stored: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, Window]:
    """Modality LUT, then VOI LUT (window, LUT, or percentiles), then MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    window, lut_inputs = _header_window(ds), _lut_inputs(ds)
    grey_levels: Callable[[np.ndarray], np.ndarray]
    if window is not None:
        center, width = window.center, window.width
        assert center is not None and width is not None  # a header window has both (_header_window)
        # The window's output range, found by pydicom itself: two values far outside the window.
        reach = abs(width) * 64 + 1
        ends = np.array([center - reach, center + reach], dtype=np.float64)
        low, high = apply_voi_lut(ends, ds, index=0, prefer_lut=False)

        def grey_levels(strip: np.ndarray) -> np.ndarray:
            return apply_voi_lut(apply_modality_lut(strip, ds), ds, index=0, prefer_lut=False)
    elif lut_inputs is not None:
        window = Window(source="voi_lut", center=None, width=None)
        # The LUT's own output range is shown: its entries often use fewer bits than it declares.
        outputs = apply_voi_lut(lut_inputs, ds, index=0, prefer_lut=True)
        low, high = float(outputs.min()), float(outputs.max())

        def grey_levels(strip: np.ndarray) -> np.ndarray:
            values = apply_modality_lut(strip, ds)
            # A VOI LUT is indexed by whole numbers; a rescale gives floats that are whole.
            if not np.issubdtype(values.dtype, np.integer):
                values = np.rint(values).astype(np.int64)
            return apply_voi_lut(values, ds, index=0, prefer_lut=True)
    else:
        # No window in the header: the stored values' own range, robust to a few outliers,
        # rather than the range BitsStored could hold (a 12-bit image in 16 bits would be black).
        step = max(1, math.ceil(math.sqrt(stored.size / _SAMPLE_PIXELS)))
        low, high = (float(v) for v in np.percentile(apply_modality_lut(stored[::step, ::step], ds), PERCENTILES))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidImage("expected finite pixel values, got NaN or infinite ones")
        window = Window(source="percentile", center=(low + high) / 2, width=high - low)

        def grey_levels(strip: np.ndarray) -> np.ndarray:
            return apply_modality_lut(strip, ds)

    eight = np.empty(stored.shape, np.uint8)
    for top in range(0, stored.shape[0], _STRIP_ROWS):
        eight[top : top + _STRIP_ROWS] = _to_eight(grey_levels(stored[top : top + _STRIP_ROWS]), float(low), float(high))
    if photometric == "MONOCHROME1":  # the lowest value is white
        np.subtract(255, eight, out=eight)
    return eight, window


def _rgb_to_eight(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    # Colour has no VOI LUT: the range the samples can hold is the range they are shown in.
    return _to_eight(rgb, 0.0, float(2**bits - 1))


def _colour(stored: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == PALETTE:
        rgb = apply_color_lut(stored, ds)
        return _rgb_to_eight(rgb, 8 * rgb.dtype.itemsize)
    if photometric in CONVERTED_TO_RGB:
        stored = convert_color_space(stored, photometric, "RGB")
    return _rgb_to_eight(stored, _whole(ds, "BitsStored", "Bits Stored", default=8 * stored.dtype.itemsize))


def inflation_budget(max_pixels: int) -> int:
    """The most a deflated data set may inflate to: the largest allowed image at four bytes a pixel
    (RGBA or 32-bit grey; the PNG path's own ceiling) plus 16 MiB of header."""
    return 4 * max_pixels + (16 << 20)


def _meta_transfer_syntax(data: bytes) -> tuple[str | None, int]:
    """A Part 10 file's transfer syntax UID from its meta group, and where the data set begins.

    Read by hand because pydicom, given a deflated file, inflates all of it before returning anything.
    """
    at, uid = MAGIC_OFFSET + len(MAGIC), None
    while at + 8 <= len(data) and data[at : at + 2] == b"\x02\x00":
        element, vr = int.from_bytes(data[at + 2 : at + 4], "little"), data[at + 4 : at + 6]
        if vr in _LONG_VRS:
            length, value_at = int.from_bytes(data[at + 8 : at + 12], "little"), at + 12
        else:
            length, value_at = int.from_bytes(data[at + 6 : at + 8], "little"), at + 8
        if element == 0x0010:
            uid = data[value_at : value_at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        at = value_at + length
    return uid, at


def _check_inflation(data: bytes, max_pixels: int) -> None:
    """Refuse a deflated data set that inflates past the budget, counted 1 MiB at a time, never held whole."""
    uid, start = _meta_transfer_syntax(data)
    if uid != DEFLATED:
        return
    budget = inflation_budget(max_pixels)
    inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), data[start:], 0
    try:
        while not inflater.eof:
            out = inflater.decompress(pending, _INFLATE_CHUNK)
            pending, total = inflater.unconsumed_tail, total + len(out)
            if total > budget:
                raise ImageTooLarge(
                    f"expected a deflated DICOM data set that inflates to at most {budget:,} bytes "
                    f"(from the {max_pixels:,}-pixel limit), got {len(data):,} bytes inflating past it"
                )
            if not out and not pending:
                break
    except zlib.error:
        raise InvalidImage("expected a deflated DICOM data set, got a deflate stream that does not inflate") from None


def _frames(ds: Dataset, frames: int) -> Iterator[tuple[int, bytes]]:
    """The encapsulated pixel data's frames, as pydicom splits them, at most `frames` of them."""
    from pydicom.encaps import generate_frames

    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=extended)):
        if index >= frames:
            return
        yield index, frame


def _check_codestreams(ds: Dataset, uid: UID, *, rows: int, columns: int, frames: int, max_pixels: int) -> None:
    """Every frame's codestream declares the header's size and samples, before any decoder sees it.

    The decoders size their output from the codestream, not from Rows and Columns.
    """
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes, RLELossless

    samples = _whole(ds, "SamplesPerPixel", "Samples per Pixel", default=1)
    if uid in JPEGTransferSyntaxes or uid in JPEGLSTransferSyntaxes:
        geometry = codestream.jpeg_geometry
    elif uid in JPEG2000TransferSyntaxes:
        geometry = codestream.j2k_geometry
    elif uid == RLELossless:
        bits = _whole(ds, "BitsAllocated", "Bits Allocated")
        expected_segments = samples * math.ceil(bits / 8)
        try:
            for index, frame in _frames(ds, frames):
                count = codestream.rle_segments(frame)
                if count != expected_segments:
                    raise InvalidImage(
                        f"expected {expected_segments} RLE segments per frame ({samples} samples of {bits} bits), "
                        f"got {count} in frame {index}"
                    )
        except ImageError:
            raise
        except Exception as exc:  # pydicom's fragment parser: its message is not repeated
            raise InvalidImage(f"expected encapsulated RLE frames, got fragments pydicom cannot split ({type(exc).__name__})") from None
        return
    else:  # a decoder we know, but no size check for it: not decoded at all
        raise UnsupportedImage(f"expected a transfer syntax whose frame size can be checked before decoding, got {_uid_text(uid)}")
    try:
        for index, frame in _frames(ds, frames):
            found = geometry(frame)
            if (found.rows, found.columns) != (rows, columns):
                refusal = ImageTooLarge if found.rows * found.columns > max_pixels else InvalidImage
                raise refusal(
                    f"expected frame {index}'s codestream to hold the header's {columns}x{rows} pixels, "
                    f"got one declaring {found.columns}x{found.rows}"
                )
            if found.components != samples:
                raise InvalidImage(
                    f"expected frame {index}'s codestream to hold {samples} component{'s' if samples > 1 else ''}, "
                    f"got one declaring {found.components}"
                )
    except ImageError:
        raise
    except Exception as exc:  # as above
        raise InvalidImage(f"expected encapsulated frames, got fragments pydicom cannot split ({type(exc).__name__})") from None


def _decode_first_frame(data: bytes, force: bool) -> np.ndarray:
    """Frame 0's stored values, the file parsed afresh: what the confined child runs."""
    from pydicom.pixels import pixel_array

    _pydicom()
    ds = _parse(io.BytesIO(data), force=force)
    _transfer_syntax(ds)
    return pixel_array(ds, index=0, as_rgb=False)


def _decode_limits(ds: Dataset, *, rows: int, columns: int, size: int) -> Limits:
    """The frame's own bytes four times over (decoder buffers, colour conversion, the answer's copy),
    the file's four times (parsed and split), and 256 MiB for the codecs' fixed costs."""
    samples = _whole(ds, "SamplesPerPixel", "Samples per Pixel", default=1)
    bits = _whole(ds, "BitsAllocated", "Bits Allocated", default=16)
    frame = rows * columns * samples * math.ceil(bits / 8)
    return Limits(memory_bytes=4 * frame + 4 * size + (256 << 20), seconds=DECODE_SECONDS)


def read_dicom(data: bytes, *, max_pixels: int, min_side: int, confine: bool = False) -> DicomPicture:
    """The first frame of DICOM `data` as 8-bit grey or RGB pixels; the size is checked first.

    Frames x rows x columns must stay within `max_pixels`, checked from the header before any
    pixel is decoded, and every compressed frame's codestream must declare that size too; both
    sides must be at least `min_side`. With `confine` (uploads), a compressed frame is decoded in
    a child process under a memory ceiling and a time limit.
    """
    _pydicom()
    from pydicom.pixels import pixel_array
    from pydicom.uid import RLELossless

    if has_part10_marker(data):
        _check_inflation(data, max_pixels)
    try:
        ds = _parse(io.BytesIO(data), force=not has_part10_marker(data))
    except Exception as exc:  # pydicom's message may quote the header: name the type only
        raise InvalidImage(
            f"expected a DICOM file, got {len(data):,} bytes that pydicom cannot parse ({type(exc).__name__})"
        ) from None
    stated = str(ds.get("Modality") or "").strip().upper()
    modality = stated if stated in MODALITIES else None
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise NoPixelData(
            f"expected a DICOM image, got a DICOM object{f' ({modality})' if modality else ''} without "
            "pixel data: a structure set, a report or another non-image object holds none"
        )
    uid = _transfer_syntax(ds)
    _check_decodable(uid)
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric not in PHOTOMETRIC:
        raise UnsupportedImage(
            f"expected a photometric interpretation among {', '.join(PHOTOMETRIC)}, got "
            f"{_photometric_text(photometric) if photometric else 'none'}"
        )
    rows, columns = _whole(ds, "Rows", "Rows"), _whole(ds, "Columns", "Columns")
    frames = _whole(ds, "NumberOfFrames", "Number of Frames", default=1)
    if frames * rows * columns > max_pixels:
        raise ImageTooLarge(
            f"expected at most {max_pixels:,} pixels (frames x rows x columns), got {frames} "
            f"frame{'s' if frames > 1 else ''} of {columns}x{rows} = {frames * rows * columns:,} pixels"
        )
    if min(rows, columns) < min_side:
        raise ImageTooSmall(f"expected both sides at least {min_side} pixels, got {columns}x{rows}")
    if uid.is_encapsulated:
        _check_codestreams(ds, uid, rows=rows, columns=columns, frames=frames, max_pixels=max_pixels)

    try:
        # RLE is left out: its decoder sizes its output from Rows and Columns, already checked.
        if confine and uid.is_encapsulated and uid != RLELossless:
            stored = run_confined(
                _decode_first_frame, data, not has_part10_marker(data),
                limits=_decode_limits(ds, rows=rows, columns=columns, size=len(data)),
                what=f"a {columns}x{rows} {_uid_text(uid)} frame to decode",
            )
        else:
            stored = pixel_array(ds, index=0, as_rgb=False)
        if photometric in GREY:
            pixels, window = _grey(stored, ds, photometric)
        else:
            pixels, window = _colour(stored, ds, photometric), None
    except ImageError:
        raise
    except Exception as exc:  # as above: the decoder's message is not repeated
        raise InvalidImage(
            f"expected {_uid_text(uid)} pixel data that decodes, got data the decoder rejects "
            f"({type(exc).__name__})"
        ) from None
    expected = (rows, columns) if photometric in GREY else (rows, columns, 3)
    if pixels.shape != expected:
        raise InvalidImage(
            f"expected a frame of {columns}x{rows} pixels, got one of shape {list(pixels.shape)}"
        )
    info = DicomInfo(
        modality=modality, photometric_interpretation=photometric, frame=0, frames=frames, window=window
    )
    return DicomPicture(pixels=np.ascontiguousarray(pixels), info=info)


def patient_key(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a DICOM file's PatientID, or None without one: groups a patient's files, holds no id.

    Unsalted, so a dataset splits the same way on every run.
    """
    try:
        ds = _parse(os.fspath(path), force=True, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as exc:  # as in read_dicom: never the parser's message, nor the path (a name, often)
        raise InvalidImage(f"expected a DICOM file, got one pydicom cannot parse ({type(exc).__name__})") from None
    patient = str(ds.get("PatientID") or "").strip()
    return hashlib.sha256(patient.encode("utf-8")).hexdigest() if patient else None
