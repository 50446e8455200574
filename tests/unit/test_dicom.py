"""DICOM through the shared decode path: grey levels, encodings, colour, frames, errors, and no patient data out."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from tests import dicom_files as files
from training.contract import dicom
from training.contract.imaging import (
    ImageError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    NoPixelData,
    UnsupportedImage,
    decode_image,
    decode_image_file,
    decode_upload,
)


def bundled(name: str) -> bytes:
    """One of the test files pydicom ships (all those used here are in its wheel: no download)."""
    with open(get_testdata_file(name, download=False), "rb") as handle:
        return handle.read()


def grey(data: bytes, **options) -> np.ndarray:
    """The decoded picture's grey levels (the three channels must be equal)."""
    rgb = decode_image(data, **options)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0]


# --- grey levels: Modality LUT, VOI LUT, MONOCHROME1 ---------------------------------------------


def test_12_bit_monochrome1_gets_rescale_then_window_then_inversion():
    stored = np.array([[0, 500, 999, 1000, 1001, 1500, 4095] * 2] * 8, np.uint16)
    data = files.encode(files.dataset(
        stored, photometric="MONOCHROME1", bits_stored=12, rescale=(2.0, -1000.0), window=(1000.0, 2001.0),
    ))
    # PS3.3 C.11.2.1.2.1 by hand: modality value m = 2v - 1000, window centre 1000 and width 2001 put
    # m <= -0.5 at the bottom and m > 1999.5 at the top; MONOCHROME1 shows the bottom white.
    m = stored.astype(np.float64) * 2 - 1000
    shown = np.clip((m - 999.5) / 2000 + 0.5, 0, 1)
    expected = 255 - np.rint(shown * 255).astype(np.uint8)
    np.testing.assert_array_equal(grey(data), expected)
    assert list(expected[0, :7]) == [255, 255, 128, 127, 127, 0, 0]


def test_monochrome1_is_monochrome2_inverted():
    stored = files.radiograph_12bit()
    one, two = (
        grey(files.encode(files.dataset(stored, photometric=p, bits_stored=12, window=(2048.0, 4096.0))))
        for p in ("MONOCHROME1", "MONOCHROME2")
    )
    np.testing.assert_array_equal(one.astype(int) + two, 255)
    assert two.min() == 0 and two.max() == 255


def test_without_a_window_the_stored_range_is_shown_not_the_bit_depth():
    # 16 bits stored, values between 1000 and 1255: divided by 2**16 they would all be black.
    stored = files.grey_ramp().astype(np.uint16) + 1000
    picture = dicom.read_dicom(files.encode(files.dataset(stored, bits_stored=16)), max_pixels=10**6, min_side=8)
    assert picture.pixels.min() <= 2 and picture.pixels.max() >= 253
    assert picture.info.window.source == "percentile"
    assert 1000 <= picture.info.window.center - picture.info.window.width / 2 < picture.info.window.center + picture.info.window.width / 2 <= 1255


def test_a_voi_lut_sequence_maps_the_stored_values():
    stored = files.grey_ramp()
    ds = files.dataset(stored, bits_stored=8)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    # A falling 12-bit LUT declared as 16 bits (a common export): the highest entry must be white.
    lut = [4095 - 16 * i for i in range(256)]
    item.add_new("LUTData", "US", lut)
    ds.VOILUTSequence = [item]
    picture = dicom.read_dicom(files.encode(ds), max_pixels=10**6, min_side=8)
    expected = np.rint((np.asarray(lut)[stored] - 15) * 255 / 4080).astype(np.uint8)
    np.testing.assert_array_equal(picture.pixels, expected)
    assert picture.info.window == dicom.Window(source="voi_lut", center=None, width=None)


def test_the_first_of_several_windows_is_used():
    stored = files.radiograph_12bit()
    ds = files.dataset(stored, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = [1000, 3000], [500, 400]
    picture = dicom.read_dicom(files.encode(ds), max_pixels=10**6, min_side=8)
    assert (picture.info.window.center, picture.info.window.width) == (1000.0, 500.0)
    below, above = stored <= 750, stored > 1249
    assert (picture.pixels[below] == 0).all() and (picture.pixels[above] == 255).all()


def test_a_sigmoid_window_puts_its_centre_at_mid_grey():
    stored = np.array([[0, 1000, 2000, 3000, 4095] * 2] * 8, np.uint16)
    ds = files.dataset(stored, bits_stored=12, window=(2000.0, 1000.0), voi_function="SIGMOID")
    out = dicom.read_dicom(files.encode(ds), max_pixels=10**6, min_side=8).pixels[0, :5]
    # PS3.3 C.11.2.1.3.1: 1 / (1 + exp(-4 (x - c) / w)) of the output range.
    expected = np.rint(255 / (1 + np.exp(-4 * (np.array([0, 1000, 2000, 3000, 4095]) - 2000) / 1000)))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert out[2] == 128


def test_an_invalid_window_is_ignored_for_the_stored_range():
    ds = files.dataset(files.radiograph_12bit(), bits_stored=12, window=(1000.0, 0.0))  # LINEAR needs width >= 1
    picture = dicom.read_dicom(files.encode(ds), max_pixels=10**6, min_side=8)
    assert picture.info.window.source == "percentile" and picture.pixels.max() == 255


def test_a_ct_is_rescaled_to_hounsfield_units_before_its_window():
    data = bundled("693_J2KI.dcm")  # JPEG 2000, signed, Rescale Intercept -1024, window 40/100
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm", download=False))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = grey(data)
    assert (out[hu <= 40 - 0.5 - 99 / 2] == 0).all() and (out[hu > 40 - 0.5 + 99 / 2] == 255).all()


# --- bytes and transfer syntaxes: the same pixels whatever the encoding ------------------------------

MR_ENCODINGS = [
    "MR_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
]


@pytest.mark.parametrize("name", MR_ENCODINGS[1:])
def test_every_lossless_encoding_of_one_mr_gives_the_same_pixels(name):
    reference = grey(bundled(MR_ENCODINGS[0]))
    assert reference.shape == (64, 64) and reference.max() > reference.min()
    np.testing.assert_array_equal(grey(bundled(name)), reference)


def test_excess_padding_is_dropped_with_pydicoms_warning():
    # The warning names byte counts only. Outside the tests, where warnings are errors, it is shown once.
    with pytest.warns(UserWarning, match="bytes of excess padding"):
        padded = grey(bundled("MR_small_padded.dcm"))
    np.testing.assert_array_equal(padded, grey(bundled("MR_small.dcm")))


COLOUR = [
    # (file, what it exercises, largest mean absolute difference from the lossless RGB reference)
    ("SC_rgb_jpeg_gdcm.dcm", "JPEG lossless, RGB", 0.0),
    ("SC_rgb_gdcm_KY.dcm", "JPEG 2000, RGB", 0.0),
    ("SC_rgb_rle_16bit.dcm", "RLE, 16 bits per sample", 0.0),
    ("SC_rgb_rle_32bit.dcm", "RLE, 32 bits per sample", 0.0),
    ("SC_rgb_rle_2frame.dcm", "two frames: the first", 0.0),
    ("SC_rgb_dcmtk_+eb+cr.dcm", "JPEG baseline, RGB", 0.5),
    ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422 uncompressed", 1.0),
    ("SC_rgb_jpeg_dcmtk.dcm", "JPEG baseline, YBR_FULL", 1.0),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "JPEG baseline, YBR_FULL_422", 3.0),
    ("SC_rgb_jls_lossy_line.dcm", "JPEG-LS near-lossless, RGB", 1.0),
]


@pytest.mark.parametrize("name, case, tolerance", COLOUR, ids=[row[1] for row in COLOUR])
def test_colour_encodings_give_the_reference_rgb(name, case, tolerance):
    reference = decode_image(bundled("SC_rgb_rle.dcm")).astype(int)
    assert reference[0, 0].tolist() == [255, 0, 0]  # red really is red: no channel swapped
    out = decode_image(bundled(name)).astype(int)
    assert out.shape == (100, 100, 3)
    assert np.abs(out - reference).mean() <= tolerance


@pytest.mark.parametrize("name, shape", [
    ("CT_small.dcm", (128, 128, 3)),  # signed, Rescale, no window
    ("JPGExtended.dcm", (1024, 256, 3)),  # 12-bit JPEG extended
    ("JPEG2000.dcm", (1024, 256, 3)),
    ("image_dfl.dcm", (512, 512, 3)),  # deflated explicit VR
    ("ExplVR_BigEnd.dcm", (60, 80, 3)),  # RGB, big endian
    ("examples_palette.dcm", (350, 800, 3)),  # PALETTE COLOR
    ("examples_jpeg2k.dcm", (480, 640, 3)),  # JPEG 2000 with YBR_RCT
    ("examples_ybr_color.dcm", (240, 320, 3)),  # 30 frames of JPEG YBR_FULL_422
    ("SC_rgb_jpeg.dcm", (256, 256, 3)),  # mislabelled explicit VR: read anyway
])
def test_bundled_files_decode_to_a_picture(name, shape):
    out = decode_image(bundled(name))
    assert out.dtype == np.uint8 and out.shape == shape
    assert out.max() > out.min()


def test_a_palette_colour_image_is_looked_up_in_its_palette():
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm", download=False))
    index = int(ds.pixel_array[175, 400])
    red = int(ds.RedPaletteColorLookupTableData[2 * index]) | int(ds.RedPaletteColorLookupTableData[2 * index + 1]) << 8
    assert decode_image(bundled("examples_palette.dcm"))[175, 400, 0] == round(red / 257)


def test_a_headerless_acr_nema_file_reads_like_its_part10_twin():
    ds = files.dataset(files.radiograph_12bit(), bits_stored=12, rescale=(1.0, -24.0))
    headerless = files.encode(ds, part10=False)
    assert headerless[128:132] != b"DICM" and dicom.is_dicom(headerless)
    np.testing.assert_array_equal(grey(headerless), grey(files.encode(ds)))


def test_an_unsupported_transfer_syntax_is_415_naming_it():
    ds = files.dataset(files.grey_ramp(), identifiers=True)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UnsupportedImage, match=r"MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\)") as caught:
        decode_image(files.encode(ds))
    assert caught.value.http_status == 415 and files.leaks(str(caught.value)) == []


# --- frames and sizes, checked before decoding ---------------------------------------------------


def test_a_multiframe_file_answers_its_first_frame_and_says_so():
    frames = np.stack([files.grey_ramp(), 255 - files.grey_ramp(), np.zeros((40, 48), np.uint8)])
    ds = files.dataset(frames, multiframe=True, window=(128.0, 256.0))
    upload = decode_upload(files.encode(ds), size=16, max_pixels=10**6, display_side=2048)
    np.testing.assert_array_equal(upload.display[..., 0], files.grey_ramp())
    assert (upload.dicom.frame, upload.dicom.frames) == (0, 3)


def test_the_pixel_limit_counts_frames_before_any_pixel_is_decoded():
    data = files.long_multiframe(400)  # 400 frames claimed, one carried: a decode would fail differently
    too_many = r"expected at most 1,000,000 pixels \(frames x rows x columns\), got 400 frames of 64x64 = 1,638,400"
    with pytest.raises(ImageTooLarge, match=too_many) as caught:
        decode_image(data, max_pixels=1_000_000)
    assert caught.value.http_status == 413 and files.leaks(str(caught.value)) == []
    with pytest.raises(InvalidImage, match="decoder rejects"):  # within the limit, the missing frames show
        decode_image(data, max_pixels=2_000_000)


def test_a_file_without_pixel_data_is_no_pixel_data():
    with pytest.raises(NoPixelData, match="without pixel data") as caught:
        decode_image(files.without_pixels())
    assert (caught.value.code, caught.value.http_status) == ("no_pixel_data", 400)
    assert files.leaks(str(caught.value)) == []


def test_a_headerless_structure_set_is_no_pixel_data():
    with pytest.raises(NoPixelData, match=r"\(RTSTRUCT\) without pixel data"):
        decode_image(bundled("rtstruct.dcm"))  # ACR-NEMA style: no preamble, no meta header


BAD_DICOM = [
    ("truncated", lambda: files.chest_xray()[:-300], InvalidImage, "decoder rejects"),
    ("meta header cut short", lambda: b"\x00" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00\xff\xff", InvalidImage,
     "got 142 bytes that pydicom cannot parse"),
    ("DICM and then nothing", lambda: b"\x00" * 128 + b"DICM", NoPixelData, "without pixel data"),
    ("too small", lambda: files.encode(files.dataset(np.zeros((4, 64), np.uint8))), ImageTooSmall, "got 64x4"),
    ("CMYK", lambda: _relabelled("CMYK"), UnsupportedImage, "got CMYK"),
    ("a name as photometric", lambda: _relabelled("ZYXWICK"), UnsupportedImage, "a value the standard does not define"),
    ("frames not a number", lambda: _with(NumberOfFrames="PID-8731-ZQX"), InvalidImage, "Number of Frames to be a whole number"),
    ("no rows", lambda: _with(Rows=None), InvalidImage, "with Rows"),
    ("a name as transfer syntax", lambda: _with_syntax("Zyxwick^Quentin"), UnsupportedImage, "a value that is not a UID"),
    ("unknown UID", lambda: _with_syntax("1.2.3.4.5"), UnsupportedImage, r"transfer syntax, got 1\.2\.3\.4\.5"),
]


def _with(**changes) -> bytes:
    ds = files.dataset(files.grey_ramp(), identifiers=True)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            ds[keyword] = pydicom.DataElement(ds[keyword].tag if keyword in ds else pydicom.datadict.tag_for_keyword(keyword), "LO", value)
    return files.encode(ds)


def _relabelled(photometric: str) -> bytes:
    ds = files.dataset(files.grey_ramp(), identifiers=True)
    ds.PhotometricInterpretation = photometric
    return files.encode(ds)


def _with_syntax(uid: str) -> bytes:
    ds = files.dataset(files.grey_ramp(), identifiers=True)
    data = files.encode(ds)
    syntax = ds.file_meta.TransferSyntaxUID.encode() + b"\x00"
    assert len(uid) <= len(syntax)
    return data.replace(syntax, uid.encode().ljust(len(syntax), b"\x00"), 1)


@pytest.mark.parametrize("make, error, message", [row[1:] for row in BAD_DICOM], ids=[row[0] for row in BAD_DICOM])
def test_bad_dicom_gets_the_exact_error_and_names_no_one(make, error, message):
    with pytest.raises(ImageError, match=message) as caught:
        decode_image(make())
    assert type(caught.value) is error
    assert "expected" in str(caught.value)
    assert files.leaks(str(caught.value)) == []


def test_errors_for_a_file_name_it_and_still_no_one(tmp_path):
    path = files.write(tmp_path / "scan.dcm", files.without_pixels())
    with pytest.raises(NoPixelData, match=r"scan\.dcm: expected a DICOM image"):
        decode_image_file(path)


def test_dicom_and_png_decodes_in_threads_leave_the_warning_filters_as_they_were():
    # pydicom's parse and PIL's header read both change the process-wide filters, under one lock.
    png = io.BytesIO()
    Image.fromarray(files.grey_ramp()).save(png, "PNG")
    inputs = [files.chest_xray(), png.getvalue()] * 16
    before = list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda data: decode_image(data).shape, inputs))
    assert shapes == [(48, 64, 3), (40, 48, 3)] * 16
    assert warnings.filters == before


# --- no patient data out -------------------------------------------------------------------------


def test_what_may_be_said_of_a_file_full_of_identifiers_names_no_one(caplog):
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        upload = decode_upload(files.chest_xray(), size=16, max_pixels=10**6, display_side=2048)
    assert asdict(upload.dicom) == {
        "modality": "CR", "photometric_interpretation": "MONOCHROME1", "frame": 0, "frames": 1,
        "window": {"source": "window", "center": 1000.0, "width": 2001.0},
    }
    assert files.leaks(repr(upload)) == []
    assert files.leaks(caplog.text) == [] and files.leaks(" ".join(str(w.message) for w in caught)) == []


def test_a_modality_outside_the_defined_terms_is_not_repeated():
    data = files.encode(files.dataset(files.grey_ramp(), modality="QXMOD"))
    assert dicom.read_dicom(data, max_pixels=10**6, min_side=8).info.modality is None


def test_pydicom_log_lines_stay_out_of_the_process_log(caplog):
    caplog.set_level(logging.DEBUG)
    decode_image(files.chest_xray())
    logging.getLogger("pydicom").warning("a line that quotes %s", files.IDENTIFIERS["PatientName"])
    assert files.leaks(caplog.text) == []


def test_patient_key_hashes_the_patient_id(tmp_path):
    path = files.write(tmp_path / "a.dcm", files.chest_xray())
    key = dicom.patient_key(path)
    assert key == hashlib.sha256(files.IDENTIFIERS["PatientID"].encode()).hexdigest()
    assert dicom.patient_key(files.write(tmp_path / "b.dcm", files.chest_xray(identifiers=False))) is None


# --- sniffing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    (b"\x00" * 128 + b"DICM" + b"\x02\x00", True),  # Part 10
    (bytes.fromhex("08000500") + b"CS" + b"\x0a\x00", True),  # headerless, explicit VR
    (bytes.fromhex("0800050004000000") + b"ISO_", True),  # headerless, implicit VR
    (bytes.fromhex("0800050000ffffff"), False),  # implicit VR with a length beyond the data
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, False),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 200, False),
    (b"BM" + b"\x00" * 200, False),
    (b"II*\x00" + b"\x00" * 200, False),
    (b"", False),
])
def test_dicom_is_sniffed_from_its_bytes(data, expected):
    assert dicom.is_dicom(data) is expected
