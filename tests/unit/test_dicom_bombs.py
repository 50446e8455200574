"""Compressed uploads that lie about their size: refused from header bytes, before anything inflates or decodes.

A codestream's own SOF or SIZ marker, not the DICOM's Rows and Columns, sizes what a decoder
allocates; a deflated data set inflates to whatever its stream holds. Each case here was a way to
make one small upload cost gigabytes; each must be answered from a few header bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from tests import dicom_files as files
from tests.project import PROJECT
from training.contract import codestream
from training.contract.confined import Limits, run_confined
from training.contract.dicom import inflation_budget
from training.contract.imaging import ImageTooLarge, InvalidImage, decode_image, decode_upload


def upload(data: bytes, max_pixels: int = 50_000_000):
    return decode_upload(data, size=32, max_pixels=max_pixels, display_side=512)


# --- the codestream's own size ---------------------------------------------------------------------


def test_honest_compressed_files_still_decode():
    for frame, syntax in ((files.jpeg_frame(), JPEGBaseline8Bit), (files.j2k_frame(), JPEG2000Lossless)):
        picture = upload(files.compressed(frame, syntax, rows=256, columns=256))
        assert (picture.width, picture.height) == (256, 256)


@pytest.mark.parametrize("make, patch, syntax", [
    (files.jpeg_frame, files.with_jpeg_size, JPEGBaseline8Bit),
    (files.j2k_frame, files.with_j2k_size, JPEG2000Lossless),
], ids=["JPEG SOF0", "JPEG 2000 SIZ"])
def test_a_codestream_claiming_more_pixels_than_allowed_is_413_before_decoding(make, patch, syntax):
    data = files.compressed(patch(make(), 40000, 40000), syntax, rows=256, columns=256)
    assert len(data) < 200_000
    with pytest.raises(ImageTooLarge, match=r"header's 256x256 pixels, got one declaring 40000x40000") as caught:
        upload(data)
    assert caught.value.http_status == 413


@pytest.mark.parametrize("make, patch, syntax", [
    (files.jpeg_frame, files.with_jpeg_size, JPEGBaseline8Bit),
    (files.j2k_frame, files.with_j2k_size, JPEG2000Lossless),
])
def test_a_codestream_of_another_size_within_the_limit_is_400(make, patch, syntax):
    data = files.compressed(patch(make(), 512, 300), syntax, rows=256, columns=256)
    with pytest.raises(InvalidImage, match=r"got one declaring 300x512") as caught:
        decode_image(data)
    assert caught.value.http_status == 400


def test_a_jpeg_ls_codestream_is_checked_too():
    import imagecodecs

    frame = imagecodecs.jpegls_encode(files.grey_ramp(64, 64))
    assert upload(files.compressed(frame, JPEGLSLossless, rows=64, columns=64)).width == 64
    with pytest.raises(ImageTooLarge, match="declaring 30000x30000"):
        upload(files.compressed(files.with_jpeg_size(frame, 30000, 30000), JPEGLSLossless, rows=64, columns=64))


def test_a_codestream_with_other_components_than_the_header_is_400():
    rgb_jpeg = files.jpeg_frame()  # grey: one component, in a file whose header says three samples
    with pytest.raises(InvalidImage, match="hold 3 components, got one declaring 1"):
        decode_image(files.compressed(rgb_jpeg, JPEGBaseline8Bit, rows=256, columns=256, samples=3))


def test_an_rle_frame_with_more_segments_than_its_samples_is_400():
    header = (15).to_bytes(4, "little") + b"".join((64 + i).to_bytes(4, "little") for i in range(15))
    frame = header + b"\x00" * 64
    with pytest.raises(InvalidImage, match="expected 1 RLE segments per frame .* got 15"):
        decode_image(files.compressed(frame, RLELossless, rows=64, columns=64))


@pytest.mark.parametrize("frame, message", [
    (b"\x00\x01", "SOI"),
    (b"\xff\xd8\xff\xda\x00\x02", "no"),  # a scan before any frame header
    (b"\xff\xd8\xff\xc0\x00\x11\x08", "truncated"),
])
def test_malformed_jpeg_headers_are_invalid(frame, message):
    with pytest.raises(InvalidImage, match=message):
        codestream.jpeg_geometry(frame)


def test_a_jp2_file_is_read_through_its_codestream_box():
    import imagecodecs

    jp2 = imagecodecs.jpeg2k_encode(files.grey_ramp(40, 48), level=0, codecformat=imagecodecs.JPEG2K.CODEC.JP2)
    assert codestream.j2k_geometry(jp2) == codestream.Geometry(rows=40, columns=48, components=1)


# --- deflate ---------------------------------------------------------------------------------------


def test_an_honest_deflated_file_decodes():
    assert upload(files.deflate_bomb(0)).width == 64


def test_a_deflated_data_set_past_its_budget_is_413():
    small_limit = 1_000_000  # a budget of 4 bytes a pixel + 16 MiB: about 20 MB
    data = files.deflate_bomb(32 << 20)
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge, match=r"inflates to at most 20,777,216 bytes") as caught:
        upload(data, max_pixels=small_limit)
    assert caught.value.http_status == 413
    assert upload(files.deflate_bomb(1 << 20), max_pixels=small_limit).width == 64  # within it: read
    assert inflation_budget(small_limit) == 20_777_216


# --- what a bomb costs: measured in a fresh process (its peak resident size) -----------------------

_MEASURE = r"""
import json, resource, sys
from tests import dicom_files as files
from training.contract.imaging import ImageError, decode_upload
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

def main():
    kind = sys.argv[1]
    if kind == "deflate":
        data = files.deflate_bomb(512 << 20)
    elif kind in ("zTXt", "iCCP"):
        data = files.png_with_chunk(kind.encode(), 256 << 20)
    elif kind == "tiff":
        data = files.tiff_with_deflated_strip(256 << 20)
    elif kind == "j2k":
        data = files.compressed(files.with_j2k_size(files.j2k_frame(), 40000, 40000), JPEG2000Lossless, rows=256, columns=256)
    else:
        data = files.compressed(files.with_jpeg_size(files.jpeg_frame(), 30000, 30000), JPEGBaseline8Bit, rows=256, columns=256)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        decode_upload(data, size=32, max_pixels=50_000_000, display_side=512)
        status = 200
    except ImageError as exc:
        status = exc.http_status
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": len(data), "status": status, "growth_mb": (after - before) / 1024}))

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("kind, status, limit_mb", [
    ("deflate", 413, 100), ("j2k", 413, 50), ("jpeg", 413, 50),
    # Pillow inflates PNG text and ICC chunks only up to PngImagePlugin.MAX_TEXT_CHUNK (1 MB): a corrupt header;
    ("zTXt", 400, 100), ("iCCP", 400, 100),
    # libtiff inflates a strip only as far as the image needs: the picture is read, the rest left.
    ("tiff", 200, 100),
])
@pytest.mark.slow  # each builds a 256-512 MiB bomb (deflated as it goes) and measures a fresh process
def test_a_bomb_is_answered_without_the_memory_it_asks_for(kind, status, limit_mb, tmp_path):
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True, env=env, cwd=PROJECT, check=True, timeout=300)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == status, outcome
    assert outcome["growth_mb"] < limit_mb, outcome


# --- the second wall: a decode confined to a memory ceiling and a time limit -----------------------


def _allocate(megabytes: int) -> int:
    return len(bytearray(megabytes << 20))


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _refuse(message: str) -> None:
    raise ValueError(message)


def test_a_confined_call_returns_its_result():
    assert run_confined(_allocate, 8, limits=Limits(memory_bytes=64 << 20, seconds=30), what="a test") == 8 << 20


def test_a_confined_call_that_outgrows_its_ceiling_is_413():
    with pytest.raises(ImageTooLarge, match="within 64 MiB"):
        run_confined(_allocate, 1024, limits=Limits(memory_bytes=64 << 20, seconds=30), what="a test")


def test_a_confined_call_that_runs_too_long_is_stopped():
    with pytest.raises(InvalidImage, match="within 0.5 s"):
        run_confined(_sleep, 30.0, limits=Limits(memory_bytes=64 << 20, seconds=0.5), what="a test")


def test_a_confined_call_raises_its_own_error_here():
    with pytest.raises(ValueError, match="no thanks"):
        run_confined(_refuse, "no thanks", limits=Limits(memory_bytes=64 << 20, seconds=30), what="a test")


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "examples_jpeg2k.dcm", "JPGExtended.dcm", "SC_rgb_jls_lossy_line.dcm"])
def test_a_confined_decode_gives_the_same_picture_as_one_in_process(name):
    from pydicom.data import get_testdata_file

    from training.contract.dicom import read_dicom

    with open(get_testdata_file(name, download=False), "rb") as handle:
        data = handle.read()
    own, confined = (read_dicom(data, max_pixels=50_000_000, min_side=16, confine=c) for c in (False, True))
    assert confined.info == own.info
    assert (confined.pixels == own.pixels).all()
