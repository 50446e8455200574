"""bench.serving: the overhead breakdown, and a short real run that ends with one parseable JSON line."""

from __future__ import annotations

import json

import pytest

from bench import serving as bench


def test_the_breakdown_splits_each_round_trip_into_handler_stages_and_the_rest():
    latencies = [0.025, 0.030, 0.027]  # seconds, as timed by the client
    server_ms = [
        {"decode": 0.3, "model": 20.0, "overlay": 1.0, "total": 21.3},
        {"decode": 0.5, "model": 24.0, "overlay": 1.5, "total": 26.0},
        {"decode": 0.4, "model": 22.0, "overlay": 1.2, "total": 23.6},
    ]
    assert bench._breakdown(latencies, server_ms) == {
        "decode": 0.4, "model": 22.0, "overlay": 1.2,
        "outside_handler": pytest.approx(3.7),  # median of 25 - 21.3, 30 - 26.0, 27 - 23.6
    }


def test_an_upload_that_is_not_an_image_is_refused_before_any_model_is_trained(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--image", str(text)])  # no --model-repo: refusing late would train the tiny repo first
    assert exit_info.value.code == 2
    assert "--image: expected a readable PNG, JPEG, BMP or TIFF file" in capsys.readouterr().err


@pytest.mark.slow  # starts `medrobust serve` and builds a Keras ResNet-50 for tf-keras-vis: about a minute
def test_a_short_run_prints_a_table_the_breakdown_then_one_json_line(tiny_repo, capsys):
    assert bench.main(["--model-repo", str(tiny_repo.path), "--requests", "4", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    table = "\n".join(lines[:-1])
    for row in ("http-1", "http-4", "floor", "keras-vis"):
        assert row in table
    assert "outside it (gunicorn, Flask, HTTP, client)" in table
    result = json.loads(lines[-1])
    assert result["model"] == tiny_repo.baseline
    assert result["input_size"] == tiny_repo.image_size
    assert result["upload"] == "random pixels"
    assert set(result["http1_breakdown_ms"]) == {"decode", "model", "overlay", "outside_handler"}
    assert result["http1_breakdown_ms"]["model"] > 0
    assert result["overhead_goal_met"] == (result["http1_p50_over_floor"] <= 1.15)


def test_an_input_size_below_resnet50s_minimum_is_refused_before_training(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--image-size", "16"])
    assert exit_info.value.code == 2
    assert "--image-size: expected at least 32 (ResNet-50's minimum), got 16" in capsys.readouterr().err
