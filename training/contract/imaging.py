"""The one decode-and-preprocess path shared by training, serving and the audit.

Bytes in, ``uint8 [H, W, 3]`` RGB out (:func:`decode_image`), then a squash-resize to the model's
square input in ``[0, 1]`` (:func:`resize_for_model`). Every failure is an :class:`ImageError`
subclass carrying an HTTP status, so the web service can answer it without knowing PIL.

DICOM (sniffed from its bytes) goes through :mod:`training.contract.dicom`, which makes the same
8-bit grey or RGB picture from it; from there on every format takes the same path.

Alpha policy: images with transparency (RGBA, LA, palette with a transparent colour) are
composited on black, i.e. each channel is multiplied by alpha. Fully opaque images are unchanged;
fully transparent pixels, whose colour is undefined, become black instead of arbitrary values.

Nothing here imports TensorFlow: the web service uses this module cheaply.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.contract import dicom
from training.contract.config import MAX_PIXELS
from training.contract.dicom import DicomInfo
from training.contract.image_errors import (  # re-exported: callers import the family from here
    ImageError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    NoPixelData,  # noqa: F401 (raised by the DICOM path, imported from here)
    UnsupportedImage,
)
from training.contract.warnings_lock import WARNINGS_LOCK

DEFAULT_MAX_PIXELS = MAX_PIXELS  # written once, in the configuration
MIN_SIDE = 8
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF"})  # PIL's formats; DICOM is read apart
_EXPECTED = "PNG, JPEG, BMP, TIFF or DICOM"

# PIL reports multi-picture JPEGs (most phone and camera photos) as MPO; they are JPEGs to a user.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check format and size before any pixel is decoded."""
    if not data:
        raise InvalidImage(f"expected image bytes ({_EXPECTED}), got 0 bytes")
    try:
        # warnings.catch_warnings swaps process-wide state: the lock pydicom's parse shares keeps
        # concurrent decodes from restoring each other's filters.
        with WARNINGS_LOCK, warnings.catch_warnings():
            # PIL only warns about bombs below twice its own limit; a warning is not a refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(
            f"expected at most {max_pixels:,} pixels, got a decompression bomb ({exc})"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage(
            f"expected an image ({_EXPECTED}), got {len(data):,} bytes that are "
            f"not a recognisable image ({describe_start(data)})"
        ) from None
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"expected a readable image, got a corrupt header ({exc})") from None

    fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")
    width, height = image.size
    try:
        if fmt not in ACCEPTED_FORMATS:
            raise UnsupportedImage(
                f"expected one of {', '.join(sorted(ACCEPTED_FORMATS))} or DICOM, got {fmt}"
            )
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"expected at most {max_pixels:,} pixels, got {width}x{height} = "
                f"{width * height:,} pixels"
            )
        if min(width, height) < MIN_SIDE:
            raise ImageTooSmall(
                f"expected both sides at least {MIN_SIDE} pixels, got {width}x{height}"
            )
    except ImageError:
        image.close()
        raise
    return image


def describe_start(data: bytes, count: int = 8) -> str:
    """The first bytes of an upload as a person reads them: hex, and the text when they are text.

    Python's bytes repr (b'hello, t') means nothing to a user of the web page."""
    head = data[:count]
    hexed = " ".join(f"{b:02x}" for b in head)
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        text = head.decode("ascii").replace("\n", " ").replace("\r", " ").replace("\t", " ")
        return f'it starts with the text "{text}", bytes {hexed}'
    return f"its first bytes are {hexed}"


# Full-size pixels are converted a strip of rows at a time, so a 49-megapixel upload never exists
# as a float or 16-bit copy: the peak is the decoded image plus one 8-bit result.
_STRIP_ROWS = 256


def _strips(image: Image.Image, mode: str, convert: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """`image` converted strip by strip with `convert` (array -> uint8 array) into a new `mode` image."""
    width, height = image.size
    out = Image.new(mode, (width, height))
    for top in range(0, height, _STRIP_ROWS):
        box = (0, top, width, min(top + _STRIP_ROWS, height))
        out.paste(Image.fromarray(convert(np.asarray(image.crop(box)))), box[:2])
    return out


def _grey16(strip: np.ndarray) -> np.ndarray:
    # 16-bit grey: the full 0..65535 range onto 0..255 rather than clipping at 255. float32 gives
    # exactly float64's answer here: v / 257 is never within float32's error of a .5 tie.
    grey: np.ndarray = np.clip(np.rint(strip.astype(np.float32) / np.float32(257.0)), 0, 255).astype(np.uint8)
    return grey


def _float_grey(strip: np.ndarray) -> np.ndarray:
    # Float images (TIFF) are taken to be in [0, 1], the usual convention for them.
    return np.clip(np.rint(strip.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _on_black(strip: np.ndarray) -> np.ndarray:
    rgba = strip.astype(np.uint16)
    return ((rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255).astype(np.uint8)


def _eight_bit(image: Image.Image) -> Image.Image:
    """Any PIL mode -> an "L" or "RGB" image (alpha composited on black, 16-bit and float scaled)."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        # Converting straight to RGB would drop the transparency (and PIL warns about it).
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _strips(image, "L", _grey16)
    if mode == "F":
        return _strips(image, "L", _float_grey)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode != "RGBA":
            image = image.convert("RGBA")
        return _strips(image, "RGB", _on_black)
    if mode in ("L", "RGB"):
        return image
    return image.convert("RGB")


def _rgb_array(image: Image.Image) -> np.ndarray:
    """An "L" or "RGB" image -> uint8 [H, W, 3] (grey repeated into three channels)."""
    pixels = np.asarray(image, dtype=np.uint8)
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else np.array(pixels)


def _fit(eight: Image.Image, max_side: int | None) -> Image.Image:
    """`eight` shrunk in place so neither side exceeds `max_side` (unchanged when None)."""
    if max_side is not None and max(eight.size) > max_side:
        eight.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return eight


def _dicom(data: bytes, max_pixels: int, *, confine: bool = False) -> dicom.DicomPicture:
    return dicom.read_dicom(data, max_pixels=max_pixels, min_side=MIN_SIDE, confine=confine)


def _decoded(image: Image.Image, max_side: int | None) -> Image.Image:
    """The opened image decoded, upright and 8-bit ("L" or "RGB"); shrunk to `max_side` if given."""
    try:
        if max_side is not None and image.format in ("JPEG", "MPO"):
            image.draft(None, (max_side, max_side))  # JPEG: decoded at a reduced DCT scale
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size copy kept
        return _fit(_eight_bit(image), max_side)
    except ImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise InvalidImage(
            f"expected a complete {image.format} image, got one that cannot be decoded ({exc})"
        ) from None


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF/DICOM bytes to uint8 [H, W, 3] RGB, EXIF orientation applied.

    ``max_side`` bounds the decoded size: JPEGs are decoded at a reduced DCT scale (cheap for
    16-megapixel fundus photos), then any image is shrunk so neither side exceeds it.
    """
    if max_side is not None and max_side < MIN_SIDE:
        raise ValueError(f"expected max_side >= {MIN_SIDE}, got {max_side}")
    if dicom.is_dicom(data):
        return _rgb_array(_fit(Image.fromarray(_dicom(data, max_pixels).pixels), max_side))
    with _open(data, max_pixels) as image:
        return _rgb_array(_decoded(image, max_side))


@dataclass(frozen=True)
class Upload:
    """One uploaded image as the front end uses it, made without a full-size RGB copy."""

    model_input: np.ndarray  # float32 [size, size, 3] in [0, 1]: what training's full decode gives, bit for bit
    display: np.ndarray  # uint8 [h, w, 3], the long side at most `display_side`: overlays are drawn on it
    width: int  # the upload's own size, EXIF orientation applied
    height: int
    dicom: DicomInfo | None = None  # for a DICOM upload, all the answer may say of its header


def decode_upload(data: bytes, *, size: int, max_pixels: int, display_side: int) -> Upload:
    """Decode an upload once into the model's input and a display copy capped at `display_side`.

    The model input is resized from the full decode, as :func:`decode_image` then
    :func:`resize_for_model` make it in training; only the picture the overlays are drawn on is
    shrunk, so a huge upload costs its decoded 8-bit pixels and little more.
    """
    if display_side < MIN_SIDE:
        raise ValueError(f"expected display_side >= {MIN_SIDE}, got {display_side}")
    if dicom.is_dicom(data):
        # An upload is anyone's file: its compressed frame is decoded under a memory ceiling.
        picture = _dicom(data, max_pixels, confine=True)
        return _upload(Image.fromarray(picture.pixels), size, display_side, info=picture.info)
    with _open(data, max_pixels) as image:
        # _decoded may return `image` itself: it is used up before the file is closed.
        return _upload(_decoded(image, None), size, display_side)


def _upload(eight: Image.Image, size: int, display_side: int, *, info: DicomInfo | None = None) -> Upload:
    width, height = eight.size
    # Resizing a grey image and repeating it equals resizing its three equal channels.
    model = eight if eight.size == (size, size) else eight.resize((size, size), Image.Resampling.BILINEAR)
    model_input = _rgb_array(model).astype(np.float32) / np.float32(255.0)
    if max(width, height) > display_side:
        eight.thumbnail((display_side, display_side), Image.Resampling.BILINEAR)
    return Upload(model_input=model_input, display=_rgb_array(eight), width=width, height=height, dicom=info)


def decode_image_file(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """:func:`decode_image` on a file; errors name the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InvalidImage(f"{os.fspath(path)}: expected a readable image file, got {exc}") from None
    try:
        return decode_image(data, max_pixels=max_pixels, max_side=max_side)
    except ImageError as exc:
        raise type(exc)(f"{os.fspath(path)}: {exc}") from None


def resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3], squashed to square, antialiased bilinear."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    if size < 1:
        raise ValueError(f"expected size >= 1, got {size}")
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return np.ascontiguousarray(rgb)
    # PIL's bilinear filter widens its support when shrinking, so downsizing is antialiased.
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def resize_for_model(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1], the models' pixel space."""
    return resize_uint8(rgb, size).astype(np.float32) / np.float32(255.0)
