"""bench.upload_memory: the hardening issue's 49-megapixel 16-bit PNG stays under the per-upload goal,
measured as the benchmark measures it, and a small run prints its table and one JSON line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench import upload_memory as bench


def test_the_49_megapixel_16_bit_png_costs_at_most_the_goal(tmp_path):
    path = tmp_path / "huge.png"
    y, x = np.mgrid[0:7000, 0:7000]
    Image.fromarray(((x + y) * 4).astype(np.uint16)).save(path)  # 49 MP, under the default 50 MP limit
    measured = bench._measure_in_child(path, "served")
    # The front end before the strip decode and the overlay cap grew by about 1.25 GB here.
    assert 0 < measured["peak_growth_mb"] <= bench.GOAL_MB


def test_full_size_overlays_cost_more_than_the_served_path(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (6000, 2000), (10, 120, 200)).save(path)
    served, full = (bench._measure_in_child(path, side)["peak_growth_mb"] for side in bench.SIDES)
    assert full > served + 50  # two 12-megapixel overlays against two capped at 2048 px


@pytest.mark.slow  # six measuring processes and a 12-megapixel JPEG: ~20 s
def test_a_small_run_prints_a_table_then_one_json_line(capsys):
    assert bench.main(["--side", "64"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["upload", "file", "served"] and "goal: at most 600 MB" in lines[-2]
    result = json.loads(lines[-1])
    assert set(result["cases"]) == {"16-bit grey PNG 64x64", "RGBA PNG 64x64", "JPEG photo 4000x3000"}
    for case in result["cases"].values():
        assert set(case["sides"]) == set(bench.SIDES) and case["file_bytes"] > 0
    assert result["goal_met"] == (result["worst_served_mb"] <= 600)
