"""The one decode-and-preprocess path shared by training, serving and the audit.

Bytes in, ``uint8 [H, W, 3]`` RGB out (:func:`decode_image`), then a squash-resize to the model's
square input in ``[0, 1]`` (:func:`resize_for_model`). Every failure is an :class:`ImageError`
subclass carrying an HTTP status, so the web service can answer it without knowing PIL.

Alpha policy: images with transparency (RGBA, LA, palette with a transparent colour) are
composited on black, i.e. each channel is multiplied by alpha. Fully opaque images are unchanged;
fully transparent pixels, whose colour is undefined, become black instead of arbitrary values.

Nothing here imports TensorFlow: the web service uses this module cheaply.
"""

from __future__ import annotations

import io
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.contract.config import MAX_PIXELS
from training.contract.errors import HttpError

DEFAULT_MAX_PIXELS = MAX_PIXELS  # written once, in the configuration
MIN_SIDE = 8
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF"})

# PIL reports multi-picture JPEGs (most phone and camera photos) as MPO; they are JPEGs to a user.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# warnings.catch_warnings swaps process-wide state; serialise our header reads so concurrent
# decodes in a thread pool never restore each other's filters.
_OPEN_LOCK = threading.Lock()
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)


class ImageError(HttpError, ValueError):
    """An image the system cannot use; ``code`` and ``http_status`` drive the HTTP answer."""

    code = "image_error"
    http_status = 400


class InvalidImage(ImageError):
    """Not an image at all, or a corrupt, truncated or empty one."""

    code = "invalid_image"
    http_status = 400


class UnsupportedImage(ImageError):
    """A real image in a format outside :data:`ACCEPTED_FORMATS`."""

    code = "unsupported_media_type"
    http_status = 415


class ImageTooLarge(ImageError):
    """More pixels than allowed (including decompression bombs)."""

    code = "image_too_large"
    http_status = 413


class ImageTooSmall(ImageError):
    """A side shorter than :data:`MIN_SIDE` pixels."""

    code = "image_too_small"
    http_status = 400


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check format and size before any pixel is decoded."""
    if not data:
        raise InvalidImage("expected image bytes (PNG, JPEG, BMP or TIFF), got 0 bytes")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # PIL only warns about bombs below twice its own limit; a warning is not a refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(
            f"expected at most {max_pixels:,} pixels, got a decompression bomb ({exc})"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage(
            f"expected an image (PNG, JPEG, BMP or TIFF), got {len(data):,} bytes that are "
            f"not a recognisable image (starting {data[:8]!r})"
        ) from None
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"expected a readable image, got a corrupt header ({exc})") from None

    fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")
    width, height = image.size
    try:
        if fmt not in ACCEPTED_FORMATS:
            raise UnsupportedImage(
                f"expected one of {', '.join(sorted(ACCEPTED_FORMATS))}, got {fmt}"
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


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, 3] RGB (alpha composited on black, 16-bit scaled)."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        # Converting straight to RGB would drop the transparency (and PIL warns about it).
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: map the full 0..65535 range onto 0..255 rather than clipping at 255.
        grey = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        # Float images (TIFF) are taken to be in [0, 1], the usual convention for them.
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255)
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes to uint8 [H, W, 3] RGB, EXIF orientation applied.

    ``max_side`` bounds the decoded size: JPEGs are decoded at a reduced DCT scale (cheap for
    16-megapixel fundus photos), then any image is shrunk so neither side exceeds it.
    """
    if max_side is not None and max_side < MIN_SIDE:
        raise ValueError(f"expected max_side >= {MIN_SIDE}, got {max_side}")
    image = _open(data, max_pixels)
    with image:
        try:
            if max_side is not None and image.format in ("JPEG", "MPO"):
                image.draft(None, (max_side, max_side))
            image.load()
            upright = ImageOps.exif_transpose(image)
            if max_side is not None and max(upright.size) > max_side:
                upright.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            rgb = _to_rgb(upright)
        except ImageError:
            raise
        except _DECODE_ERRORS as exc:
            raise InvalidImage(
                f"expected a complete {image.format} image, got one that cannot be decoded ({exc})"
            ) from None
    return rgb


def decode_image_file(
    path: str | os.PathLike,
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


def load_for_model(
    data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(decoded uint8 RGB, float32 model input) for one uploaded image.

    Leave ``max_side`` unset for bit-for-bit parity with training's default full decode.
    """
    rgb = decode_image(data, max_pixels=max_pixels, max_side=max_side)
    return rgb, resize_for_model(rgb, size)
