"""bench.overlay: a short real run over small images ends with one parseable JSON line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from bench import overlay as bench


def test_a_short_run_compares_both_encoders_on_every_image(monkeypatch, capsys):
    rng = np.random.default_rng(0)
    images = [("noise", rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)), ("flat", np.full((9, 9, 3), 90, np.uint8))]
    monkeypatch.setattr(bench, "_cases", lambda: images)
    assert bench.main(["--seconds", "0.01"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "Pillow ms" in lines[0] and "medrobust ms" in lines[0]
    results = json.loads(lines[-1])["overlay_png"]
    assert [(r["image"], r["size"]) for r in results] == [("noise", "24x16"), ("flat", "9x9")]
    for r in results:
        assert r["pillow_ms"] > 0 and r["medrobust_ms"] > 0
        assert r["speedup"] == pytest.approx(r["pillow_ms"] / r["medrobust_ms"], rel=0.02)


def test_the_cases_are_real_images_or_labelled_synthetic_ones():
    cases = bench._cases()
    names = [name for name, _ in cases]
    assert names[0] == "random pixels 64x64"
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for _, a in cases)
    if not (bench.SHARED_DATA / "medmnist").exists():
        assert all(n.startswith("synthetic") for n in names[1:])


def test_pillow_side_writes_a_real_png():
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(bench._pillow_png(pixels)))), pixels)
