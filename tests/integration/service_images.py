"""Uploads for the service tests, made in memory: good images of every accepted kind, and bad ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb_array(width: int = 96, height: int = 72, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def png(width: int = 96, height: int = 72, seed: int = 0) -> bytes:
    return _save(Image.fromarray(rgb_array(width, height, seed)), "PNG")


def jpeg(width: int = 96, height: int = 72) -> bytes:
    return _save(Image.fromarray(rgb_array(width, height)), "JPEG", quality=90)


def bmp() -> bytes:
    return _save(Image.fromarray(rgb_array()), "BMP")


def tiff() -> bytes:
    return _save(Image.fromarray(rgb_array()), "TIFF")


def rgba_png() -> bytes:
    rgba = np.dstack([rgb_array(), np.full((72, 96), 128, np.uint8)])
    return _save(Image.fromarray(rgba), "PNG")


def grey16_png() -> bytes:
    grey = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    return _save(Image.fromarray(grey), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(Image.new("CMYK", (64, 48), (10, 200, 30, 5)), "JPEG")


def exif_rotated_jpeg() -> bytes:
    """Stored 80 wide x 40 high with orientation 6: shown (and decoded) 40 wide x 80 high."""
    image = Image.fromarray(rgb_array(80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(image, "JPEG", exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = jpeg(128, 128)
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), i) for i in (1, 2)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def one_pixel_png() -> bytes:
    return _save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")


def decompression_bomb_png(side: int = 60_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (billions): a decoder must refuse, not allocate."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * side
    data = zlib.compress(row * 4, 9)  # a few rows are enough: nothing past the header must be read
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def flat_png(width: int, height: int) -> bytes:
    """Many pixels, few bytes (one colour compresses to almost nothing)."""
    return _save(Image.new("RGB", (width, height), (90, 120, 150)), "PNG")
