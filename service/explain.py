"""One uploaded image through a model: decode, resize, `gradcam` (or `serving_default`), overlays."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ApiError
from service.overlay import ATTENTION_COLORMAP, HEATMAP_COLORMAP, overlay_png, to_png
from service.predictor import Predictor
from training.contract.dicom import DicomInfo
from training.contract.imaging import decode_upload

if TYPE_CHECKING:
    from service.predictor import GradcamResult, Prediction

# Overlays are pictures for a person: 2048 px on the long side is more than a screen shows, and it
# bounds what a huge upload costs after its decode (python -m bench.upload_memory measures it).
OVERLAY_MAX_SIDE = 2048
# How long a request waits for a decode slot before it is told to come back (503, Retry-After).
DECODE_WAIT_SECONDS = 2.0


# An attentive model answers two overlays. From about 128x128 up they are encoded at once, one in
# a pool thread (Pillow and libpng release the GIL): 8.1 -> 4.5 ms for a 224 px upload. Below that,
# handing work to a thread costs more than it saves (0.8 -> 1.4 ms at 64 px).
PARALLEL_OVERLAY_MIN_PIXELS = 128 * 128


@lru_cache(maxsize=1)
def _overlay_pool() -> ThreadPoolExecutor:
    """Created on first use, so in the gunicorn worker after the fork, never in the parent."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="medrobust-overlay")


def map_problem(name: str, values: np.ndarray | None, shape: tuple[int, int]) -> str | None:
    """Why a model's map cannot be drawn (wrong shape, NaN or infinite values), or None when it can.

    The contract promises finite maps in [0, 1]; a model that breaks it still gets its prediction
    answered, with the overlay left out and this reason stated, never a 500.
    """
    if values is None:
        return None
    if values.shape != shape:
        return f"the model's {name} has shape {list(values.shape)}, expected {list(shape)}"
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        return f"the model's {name} has {bad} of {values.size} values NaN or infinite"
    return None


# The grid is data for programs: four decimals are far finer than any colour scale shows, and keep
# a 14x14 grid's JSON under 2 kB.
GRID_DECIMALS = 4


@dataclass(frozen=True)
class HeatmapGrid:
    """The Grad-CAM map at its layer's own resolution, as the JSON answer carries it."""

    layer: str
    values: np.ndarray  # float32 [h, w] in [0, 1]


def heatmap_grid(grid: np.ndarray | None, card: Mapping[str, Any]) -> tuple[HeatmapGrid | None, str | None]:
    """(the grid of one image, None) when the model answered a usable one, else (None, why not)."""
    if grid is None:
        return None, (
            "this version's gradcam signature has no heatmap_grid output (exported before it was added); "
            "re-export it with medrobust export to get the grid"
        )
    expected = card.get("gradcam_grid")
    if grid.ndim != 2 or (expected is not None and list(grid.shape) != list(expected)):
        return None, f"the model's heatmap_grid has shape {list(grid.shape)}, expected {expected or '[h, w]'}"
    problem = map_problem("heatmap_grid", grid, grid.shape)
    if problem is None and (grid.min() < 0.0 or grid.max() > 1.0):
        problem = f"the model's heatmap_grid has values in [{grid.min():g}, {grid.max():g}], expected [0, 1]"
    if problem is not None:
        return None, problem
    return HeatmapGrid(str(card.get("gradcam_layer", "")), np.round(grid.astype(np.float32), GRID_DECIMALS)), None


def _overlays(
    rgb: np.ndarray, heatmap: np.ndarray | None, attention: np.ndarray | None
) -> tuple[bytes | None, bytes | None]:
    """(Grad-CAM overlay PNG, attention overlay PNG), each None when its map is (no attention
    map without a heatmap: both come from the `gradcam` signature)."""
    if heatmap is None:
        return None, attention_only(rgb, attention)
    if attention is None or rgb.shape[0] * rgb.shape[1] < PARALLEL_OVERLAY_MIN_PIXELS:
        attention_png = overlay_png(rgb, attention, colormap=ATTENTION_COLORMAP) if attention is not None else None
        return overlay_png(rgb, heatmap, colormap=HEATMAP_COLORMAP), attention_png
    pending = _overlay_pool().submit(overlay_png, rgb, attention, colormap=ATTENTION_COLORMAP)
    return overlay_png(rgb, heatmap, colormap=HEATMAP_COLORMAP), pending.result()


def attention_only(rgb: np.ndarray, attention: np.ndarray | None) -> bytes | None:
    return overlay_png(rgb, attention, colormap=ATTENTION_COLORMAP) if attention is not None else None


@dataclass(frozen=True)
class Explanation:
    """What the API answers for one image."""

    model: str
    version: int
    task: str
    label: str
    class_index: int
    probabilities: dict[str, float]
    image_size: tuple[int, int]  # (width, height) of the upload, EXIF rotation applied
    overlay_size: tuple[int, int] | None  # (width, height) of the overlays, when any is drawn
    overlay_png: bytes | None
    attention_png: bytes | None
    timings_ms: dict[str, float]
    omitted: dict[str, str]  # overlay name ("overlay", "attention") -> why the model's map was not drawn
    dicom: DicomInfo | None = None  # for a DICOM upload: modality, photometric interpretation, frame, window
    # For a DICOM upload, the windowed picture the overlays are drawn on (a browser cannot show the file).
    display_png: bytes | None = None
    card: Mapping[str, Any] | None = None  # the card of the version that answered
    grid: HeatmapGrid | None = None  # the raw Grad-CAM grid, when explained and the version answers one
    grid_omitted: str | None = None  # why an explained answer has no grid


@contextmanager
def decode_slot(slots: threading.BoundedSemaphore, wait_seconds: float | None = None) -> Iterator[None]:
    """Hold one of the process's decode slots, or answer 503 with Retry-After when all stay busy.

    A decode holds an upload's full-size pixels; bounding how many run at once bounds the memory
    a burst of huge uploads can take.
    """
    wait_seconds = DECODE_WAIT_SECONDS if wait_seconds is None else wait_seconds
    if not slots.acquire(timeout=wait_seconds):
        raise ApiError(
            "busy",
            f"expected a free decode slot within {wait_seconds:g} s, got none: every slot is decoding "
            "another upload; retry shortly",
            503,
            headers={"Retry-After": "1"},
        )
    try:
        yield
    finally:
        slots.release()


def explain_upload(
    predictor: Predictor,
    model: str,
    card: Mapping[str, Any],
    data: bytes,
    *,
    version: int | str | None = None,
    explain: bool = True,
    max_pixels: int,
    decode_slots: threading.BoundedSemaphore,
) -> Explanation:
    """Classify `data` (image bytes) with `model`; with `explain`, overlays at the upload's
    aspect, at most OVERLAY_MAX_SIDE on the long side."""
    clock = time.perf_counter
    t0 = clock()
    size = int(card["input_size"][0])
    with decode_slot(decode_slots):
        upload = decode_upload(data, size=size, max_pixels=max_pixels, display_side=OVERLAY_MAX_SIDE)
    rgb, batch = upload.display, upload.model_input[None]
    t1 = clock()
    omitted: dict[str, str] = {}
    result: GradcamResult | Prediction
    raw_grid = None
    if explain:
        result = predictor.gradcam(model, batch, version=version)
        heatmap: np.ndarray | None = np.asarray(result.heatmap[0])
        attention = np.asarray(result.attention_map[0]) if result.attention_map is not None else None
        for key, name, values in (("overlay", "Grad-CAM heatmap", heatmap), ("attention", "attention map", attention)):
            problem = map_problem(name, values, (size, size))
            if problem is not None:
                omitted[key] = problem
        heatmap = None if "overlay" in omitted else heatmap
        attention = None if "attention" in omitted else attention
        raw_grid = np.asarray(result.heatmap_grid[0]) if result.heatmap_grid is not None else None
    else:
        result = predictor.predict(model, batch, version=version)
        heatmap, attention = None, None
    t2 = clock()
    # The labels come from the card of the version that answered: during a rollout the version
    # resolved for `card` (before the upload was read) may not be the one the backend used.
    card = predictor.model_card(result.model, int(result.version))
    overlay, attention_png = _overlays(rgb, heatmap, attention)
    grid, grid_omitted = heatmap_grid(raw_grid, card) if explain else (None, None)
    t3 = clock()
    names = [str(n) for n in card["class_names"]]
    probabilities = [float(p) for p in result.probabilities[0]]
    index = int(result.class_id[0])
    return Explanation(
        model=result.model,
        version=int(result.version),
        task=str(card.get("task", "")),
        label=names[index],
        class_index=index,
        probabilities=dict(zip(names, probabilities)),
        image_size=(upload.width, upload.height),
        overlay_size=(int(rgb.shape[1]), int(rgb.shape[0])) if overlay or attention_png else None,
        overlay_png=overlay,
        attention_png=attention_png,
        timings_ms={
            "decode": round((t1 - t0) * 1000, 2),
            "model": round((t2 - t1) * 1000, 2),
            "overlay": round((t3 - t2) * 1000, 2),
            "total": round((t3 - t0) * 1000, 2),
        },
        omitted=omitted,
        dicom=upload.dicom,
        display_png=to_png(rgb) if upload.dicom is not None else None,
        card=card,
        grid=grid,
        grid_omitted=grid_omitted,
    )
