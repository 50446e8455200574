"""The shared decode path: every pixel mode to RGB uint8, and the exact error for bad bytes."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from training.contract.imaging import (
    ACCEPTED_FORMATS,
    ImageError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    UnsupportedImage,
    decode_image,
    decode_image_file,
    decode_upload,
    resize_for_model,
)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient_rgb(height: int = 24, width: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 7 % 256, y * 9 % 256, (x + y) * 3 % 256], axis=2).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but carries almost no data: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- every accepted mode becomes uint8 [H, W, 3] RGB ----------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_rgb_round_trips_exactly(fmt):
    rgb = gradient_rgb()
    out = decode_image(encode(Image.fromarray(rgb), fmt))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grey_png_becomes_three_equal_channels():
    grey = gradient_rgb()[:, :, 0]
    out = decode_image(encode(Image.fromarray(grey), "PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_rgba_is_composited_on_black():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :8, 3] = 255  # opaque: unchanged
    rgba[:, 8:12, 3] = 128  # half: scaled by alpha
    rgba[:, 12:, 3] = 0  # transparent: black
    out = decode_image(encode(Image.fromarray(rgba), "PNG"))
    assert (out[:, :8] == 200).all()
    assert (out[:, 8:12] == 100).all()
    assert (out[:, 12:] == 0).all()


def test_grey_with_alpha():
    la = Image.fromarray(np.full((10, 10), 90, np.uint8)).convert("LA")
    out = decode_image(encode(la, "PNG"))
    assert (out == 90).all()


def test_sixteen_bit_grey_is_scaled_by_full_range_not_clipped():
    values = np.array([[0, 1000, 32896, 65535]], np.uint16).repeat(8, axis=0).repeat(2, axis=1)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    data = encode(image, "PNG")
    with Image.open(io.BytesIO(data)) as reopened:  # the file really is 16-bit
        assert reopened.mode in ("I;16", "I")
    out = decode_image(data)
    assert out[0, ::2, 0].tolist() == [0, 4, 128, 255]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    red, green, blue = out.reshape(-1, 3).mean(axis=0)
    assert red > 230 and green < 25 and blue < 25


def test_palette_with_transparency_is_composited():
    palette = Image.new("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10, 10, 250, 10] + [0] * 759)
    palette.paste(2, (0, 0, 6, 12))
    out = decode_image(encode(palette, "PNG", transparency=2))
    assert (out[:, :6] == 0).all()  # the transparent colour (green) is gone
    assert (out[:, 6:] == (250, 10, 10)).all()


def test_exif_orientation_is_applied():
    # Stored landscape, white on the left; orientation 6 means "rotate 90 degrees clockwise to
    # display", which puts the stored left edge at the top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95))
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50


def test_max_side_bounds_a_large_jpeg_and_keeps_aspect():
    big = Image.fromarray(np.tile(gradient_rgb(), (50, 75, 1)))  # 2400 x 1200
    out = decode_image(encode(big, "JPEG"), max_side=256)
    assert out.shape == (128, 256, 3)
    png = decode_image(encode(big, "PNG"), max_side=100)
    assert png.shape == (50, 100, 3)


def test_max_side_below_min_side_is_rejected():
    with pytest.raises(ValueError, match="max_side"):
        decode_image(encode(Image.fromarray(gradient_rgb()), "PNG"), max_side=2)


# --- bad bytes: the exact exception for each ------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(np.tile(gradient_rgb(), (4, 4, 1))), "JPEG")
    return data[: len(data) // 2]


def _animated_gif() -> bytes:
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


BAD_BYTES = [
    ("zero bytes", lambda: b"", InvalidImage, "0 bytes"),
    ("text", lambda: b"patient notes, not a picture", InvalidImage, "not a recognisable image"),
    ("truncated jpeg", _truncated_jpeg, InvalidImage, "cannot be decoded"),
    ("gif", lambda: encode(Image.new("RGB", (16, 16)), "GIF"), UnsupportedImage, "got GIF"),
    ("animated gif", _animated_gif, UnsupportedImage, "got GIF"),
    ("bomb over twice PIL's limit", lambda: png_header_only(100_000, 100_000), ImageTooLarge, "pixels"),
    ("bomb in PIL's warning band", lambda: png_header_only(10_000, 9_000), ImageTooLarge, "pixels"),
    ("over our own limit", lambda: png_header_only(8_000, 7_000), ImageTooLarge, "56,000,000"),
    ("1x1", lambda: encode(Image.new("RGB", (1, 1)), "PNG"), ImageTooSmall, "got 1x1"),
    ("thin strip", lambda: encode(Image.new("L", (100, 4)), "PNG"), ImageTooSmall, "got 100x4"),
]


@pytest.mark.parametrize(
    "make, error, message", [row[1:] for row in BAD_BYTES], ids=[row[0] for row in BAD_BYTES]
)
def test_bad_bytes_raise_the_exact_error(make, error, message):
    with pytest.raises(error, match=message) as caught:
        decode_image(make())
    assert type(caught.value) is error
    assert "expected" in str(caught.value)


@pytest.mark.parametrize(
    "error, code, status",
    [
        (InvalidImage, "invalid_image", 400),
        (UnsupportedImage, "unsupported_media_type", 415),
        (ImageTooLarge, "image_too_large", 413),
        (ImageTooSmall, "image_too_small", 400),
    ],
)
def test_error_codes_and_statuses(error, code, status):
    assert issubclass(error, ImageError) and issubclass(error, ValueError)
    assert (error.code, error.http_status) == (code, status)


def test_accepted_formats():
    assert ACCEPTED_FORMATS == {"PNG", "JPEG", "BMP", "TIFF"}


def test_max_pixels_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match="expected at most 9,999 pixels, got 100x100"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)


def test_concurrent_decodes_keep_their_own_outcome():
    good = encode(Image.fromarray(gradient_rgb()), "PNG")
    bomb = png_header_only(10_000, 9_000)

    def attempt(data):
        try:
            return decode_image(data).shape
        except ImageTooLarge:
            return "too large"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, [good, bomb] * 20))
    assert results == [(24, 32, 3), "too large"] * 20


# --- files, resizing, the service's convenience ---------------------------------------------


def test_decode_image_file_names_the_file(tmp_path):
    good = tmp_path / "ok.png"
    Image.fromarray(gradient_rgb()).save(good)
    assert decode_image_file(good).shape == (24, 32, 3)
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"nope")
    with pytest.raises(InvalidImage, match=r"scan\.png: expected an image"):
        decode_image_file(bad)
    with pytest.raises(InvalidImage, match=r"missing\.png: expected a readable image file"):
        decode_image_file(tmp_path / "missing.png")


def test_resize_for_model_squashes_to_float_unit_range():
    out = resize_for_model(gradient_rgb(24, 32), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    same = resize_for_model(gradient_rgb(16, 16), 16)
    np.testing.assert_array_equal(same * 255.0, gradient_rgb(16, 16).astype(np.float32))


def test_resize_is_antialiased():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes average to mid-grey when shrunk properly
    out = resize_for_model(stripes, 8)
    assert np.allclose(out, 0.5, atol=0.05)


def test_resize_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"expected uint8 \[H, W, 3\], got float32"):
        resize_for_model(np.zeros((8, 8, 3), np.float32), 4)


def _every_mode() -> dict[str, bytes]:
    """One file per decode branch, each 300 x 200 so the display cap and the resize both act."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (200, 300, 3), np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (200, 300), np.uint8)])
    grey16 = rng.integers(0, 65536, (200, 300), np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6
    palette = Image.fromarray(rgb).convert("P")
    return {
        "rgb-png": encode(Image.fromarray(rgb), "PNG"),
        "grey-png": encode(Image.fromarray(rgb[:, :, 0]), "PNG"),
        "rgba-png": encode(Image.fromarray(rgba), "PNG"),
        "la-png": encode(Image.fromarray(rgb[:, :, 0]).convert("LA"), "PNG"),
        "palette-transparent-png": encode(palette, "PNG", transparency=3),
        "grey16-png": encode(Image.fromarray(grey16), "PNG"),
        "float-tiff": encode(Image.fromarray(grey16.astype(np.float32) / 65535), "TIFF"),
        "rotated-jpeg": encode(Image.fromarray(rgb), "JPEG", exif=exif, quality=90),
        "cmyk-jpeg": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
    }


@pytest.mark.parametrize("name", list(_every_mode()))
def test_an_uploads_model_input_is_trainings_full_decode_bit_for_bit(name):
    data = _every_mode()[name]
    upload = decode_upload(data, size=32, max_pixels=10**6, display_side=64)
    expected = resize_for_model(decode_image(data), 32)
    assert upload.model_input.dtype == np.float32
    np.testing.assert_array_equal(upload.model_input, expected)
    full = decode_image(data)
    assert (upload.height, upload.width) == full.shape[:2]
    assert max(upload.display.shape[:2]) == 64 and upload.display.dtype == np.uint8


def test_the_display_copy_keeps_the_aspect_and_is_the_decode_when_small():
    data = encode(Image.fromarray(gradient_rgb(24, 32)), "PNG")
    upload = decode_upload(data, size=16, max_pixels=10**6, display_side=2048)
    np.testing.assert_array_equal(upload.display, decode_image(data))
    wide = encode(Image.new("RGB", (3000, 1000), (10, 20, 30)), "PNG")
    upload = decode_upload(wide, size=16, max_pixels=10**7, display_side=2048)
    assert (upload.width, upload.height) == (3000, 1000) and upload.display.shape == (683, 2048, 3)


def test_sixteen_bit_grey_maps_every_value_as_a_float64_division_would():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = decode_image(encode(Image.fromarray(values), "PNG"))[:, :, 0]
    expected = np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_max_side_shrinks_a_sixteen_bit_image():  # PIL cannot resize I;16 itself
    values = np.full((400, 600), 65535, np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG"), max_side=60)
    assert out.shape == (40, 60, 3) and (out == 255).all()


@pytest.mark.parametrize(
    "data, shown",
    [
        (b"hello, this is a text file\n", 'it starts with the text "hello, t", bytes 68 65 6c 6c 6f 2c 20 74'),
        (b"\x00\x01\xfe\xffnot an image", "its first bytes are 00 01 fe ff 6e 6f 74 20"),
    ],
    ids=["text", "binary"],
)
def test_an_unknown_file_is_described_without_a_python_repr(data, shown):
    with pytest.raises(InvalidImage) as caught:
        decode_image(data)
    assert shown in caught.value.message
    assert "b'" not in caught.value.message and "\\x" not in caught.value.message
