"""Heatmaps made visible: a colour-mapped map blended over the uploaded image, as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

HEATMAP_COLORMAP = "jet"  # the convention of Grad-CAM papers, so readers know what red means
ATTENTION_COLORMAP = "viridis"


def colorize(heatmap: np.ndarray, size: tuple[int, int], colormap: str = HEATMAP_COLORMAP) -> np.ndarray:
    """float [h, w] in [0, 1] -> uint8 RGB [height, width, 3] at `size` = (width, height)."""
    from matplotlib import colormaps  # the registry alone: no pyplot, no GUI backend

    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected a heatmap of shape [H, W], got {list(heat.shape)}")
    if not np.all(np.isfinite(heat)):
        raise ValueError("expected a finite heatmap, got NaN or infinite values")
    heat = np.clip(heat, 0.0, 1.0)
    resized = np.asarray(Image.fromarray(heat).resize(size, Image.Resampling.BILINEAR))
    rgba = colormaps[colormap](np.clip(resized, 0.0, 1.0), bytes=True)
    return rgba[:, :, :3]


def blend(original: np.ndarray, heatmap: np.ndarray, *, colormap: str = HEATMAP_COLORMAP, alpha: float = 0.45) -> np.ndarray:
    """The colour-mapped heatmap over `original` (uint8 [H, W, 3]), at the original's size."""
    if original.dtype != np.uint8 or original.ndim != 3 or original.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {original.dtype} {list(original.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"expected alpha in [0, 1], got {alpha}")
    height, width = original.shape[:2]
    colours = colorize(heatmap, (width, height), colormap).astype(np.float32)
    mixed = (1.0 - alpha) * original.astype(np.float32) + alpha * colours
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def to_png(rgb: np.ndarray) -> bytes:
    """uint8 RGB -> PNG bytes (fast compression: these are answered, not archived)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def overlay_png(original: np.ndarray, heatmap: np.ndarray, *, colormap: str = HEATMAP_COLORMAP) -> bytes:
    """The PNG the API answers: `heatmap` blended over the uploaded image at its own size."""
    return to_png(blend(original, heatmap, colormap=colormap))
