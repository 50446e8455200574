"""Heatmaps made visible: a colour-mapped map blended over the uploaded image, as PNG bytes.

Everything per request stays in uint8 and in C loops: the heatmap is quantised to 256 levels
(the colour maps have 256 entries anyway), resized as an 8-bit image, coloured through a lookup
table built once per colour map, and blended with `Image.blend`. The PNG is written by libpng
(through imagecodecs) with settings chosen for speed; see `to_png`.
"""

from __future__ import annotations

from functools import cache
from typing import cast

import imagecodecs
import numpy as np
from PIL import Image

HEATMAP_COLORMAP = "jet"  # the convention of Grad-CAM papers, so readers know what red means
ATTENTION_COLORMAP = "viridis"


@cache
def _palette(colormap: str) -> bytes:
    """The colour map's 256 RGB entries as a PIL palette (built once: matplotlib is slow per call)."""
    from matplotlib import colormaps  # the registry alone: no pyplot, no GUI backend

    rgba = colormaps[colormap](np.arange(256), bytes=True)  # integer input indexes the table directly
    return rgba[:, :3].tobytes()


def _checked_levels(heatmap: np.ndarray) -> Image.Image:
    """float [h, w] in [0, 1] -> an 8-bit ("L") image of its 256 levels."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected a heatmap of shape [H, W], got {list(heat.shape)}")
    if not np.all(np.isfinite(heat)):
        raise ValueError("expected a finite heatmap, got NaN or infinite values")
    levels = np.rint(np.clip(heat, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    return Image.fromarray(levels)


def _colour_image(heatmap: np.ndarray, size: tuple[int, int], colormap: str) -> Image.Image:
    """float [h, w] in [0, 1] -> an RGB image at `size` = (width, height)."""
    levels = _checked_levels(heatmap)
    if levels.size != size:
        levels = levels.resize(size, Image.Resampling.BILINEAR)
    levels.putpalette(_palette(colormap))  # "L" -> "P": the palette lookup happens in C on convert
    return levels.convert("RGB")


def _blended(original: np.ndarray, heatmap: np.ndarray, colormap: str, alpha: float) -> Image.Image:
    if original.dtype != np.uint8 or original.ndim != 3 or original.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {original.dtype} {list(original.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"expected alpha in [0, 1], got {alpha}")
    height, width = original.shape[:2]
    colours = _colour_image(heatmap, (width, height), colormap)
    return Image.blend(Image.fromarray(np.ascontiguousarray(original)), colours, alpha)


def blend(original: np.ndarray, heatmap: np.ndarray, *, colormap: str = HEATMAP_COLORMAP, alpha: float = 0.45) -> np.ndarray:
    """The colour-mapped heatmap over `original` (uint8 [H, W, 3]), at the original's size."""
    return np.asarray(_blended(original, heatmap, colormap, alpha))


def to_png(image: np.ndarray | Image.Image) -> bytes:
    """uint8 RGB (array or PIL image) -> PNG bytes, encoded for speed: these are answered, not archived.

    zlib level 1 with the RLE strategy and the Sub filter on every row (OpenCV's fast settings):
    Pillow offers no filter choice and tries all five per row, which made encoding the largest
    cost the front end adds to a small model's call. `python -m bench.overlay` compares the two.
    """
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    encoded = imagecodecs.png_encode(
        pixels, level=1, strategy=imagecodecs.PNG.STRATEGY.RLE, filter=imagecodecs.PNG.FILTER.SUB
    )
    return cast(bytes, encoded)  # bytes without `out=` (typed bytes | bytearray): no copy needed


def overlay_png(original: np.ndarray, heatmap: np.ndarray, *, colormap: str = HEATMAP_COLORMAP, alpha: float = 0.45) -> bytes:
    """The PNG the API answers: `heatmap` blended over the uploaded image at its own size."""
    return to_png(_blended(original, heatmap, colormap, alpha))


def colour_scale_png(colormap: str, *, width: int = 256, height: int = 16) -> bytes:
    """A legend bar for the page: `colormap`'s 256 colours from 0 (left) to 1 (right), as PNG bytes.

    Drawn through the same palette as the overlays, so the legend cannot drift from what they show."""
    levels = np.repeat(np.rint(np.linspace(0, 255, width)).astype(np.uint8)[None, :], height, axis=0)
    image = Image.fromarray(levels)
    image.putpalette(_palette(colormap))
    return to_png(image.convert("RGB"))
