"""Overlays: the colour-mapped heatmap over the upload, at the upload's size, as a PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.overlay import blend, overlay_png


def test_overlay_is_a_png_of_the_upload_size():
    original = np.full((30, 50, 3), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1.0
    image = Image.open(io.BytesIO(overlay_png(original, heat)))
    assert (image.format, image.size, image.mode) == ("PNG", (50, 30), "RGB")
    pixels = np.asarray(image)
    assert pixels.std() > 0  # the hot spot shows


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (64, 64), (450, 600)])
def test_the_png_holds_exactly_the_blended_pixels(size):
    # The fast encoder's settings (RLE, the Sub filter on every row) change the size, never the pixels.
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    heat = rng.random((4, 4)).astype(np.float32)
    decoded = np.asarray(Image.open(io.BytesIO(overlay_png(original, heat))))
    np.testing.assert_array_equal(decoded, blend(original, heat))


def test_zero_heatmap_still_blends_and_alpha_bounds():
    original = np.zeros((10, 10, 3), np.uint8)
    mixed = blend(original, np.zeros((4, 4)), alpha=0.5)
    assert mixed.shape == (10, 10, 3) and mixed.max() > 0  # the colour map's "cold" end, not NaN
    with pytest.raises(ValueError, match="expected alpha in"):
        blend(original, np.zeros((4, 4)), alpha=2.0)


@pytest.mark.parametrize(
    ("original", "heat", "message"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((2, 2)), "expected uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 2)), "expected a heatmap of shape"),
        (np.zeros((4, 4, 3), np.uint8), np.full((2, 2), np.nan), "expected a finite heatmap"),
    ],
)
def test_refuses_bad_inputs(original, heat, message):
    with pytest.raises(ValueError, match=message):
        overlay_png(original, heat)


def test_does_not_import_pyplot():
    # pyplot's global state is not thread-safe under a threaded server. Checked in a fresh
    # interpreter: other tests in this process (audit reports) import pyplot legitimately.
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from service.overlay import overlay_png\n"
        "overlay_png(np.zeros((8, 8, 3), np.uint8), np.ones((2, 2)))\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
