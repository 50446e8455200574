"""bench.training: a tiny run through the file-decoding path ends with one parseable JSON line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench import training as bench


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        for i in range(5):
            path = tmp_path / name / f"{i}.{'png' if i % 2 else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(path)
    return tmp_path


@pytest.mark.slow  # two ResNet-50s traced for training: about a minute on 2 cores
@pytest.mark.bench
def test_a_tiny_run_prints_a_table_then_one_json_line(image_folder, capsys):
    argv = ["--images", "6", "--image-size", "32", "--batch-size", "3", "--epochs", "1", "--dataset", f"folder:{image_folder}"]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "ratio pipeline / in-memory" in "\n".join(lines[:-1])
    result = json.loads(lines[-1])
    assert {
        "ratio", "pipeline_images_per_second", "in_memory_images_per_second", "median_step_ratio", "cpu_ratio",
        "settings", "data", "machine",
    } <= set(result)
    assert result["settings"] == {
        "dataset": f"folder:{image_folder}", "images": 6, "image_size": 32, "batch_size": 3, "epochs": 1,
        "backbone": "resnet50", "attention": False, "seed": 0,
    }
    assert result["data"]["source"] == "files decoded from disk" and result["data"]["synthetic"] is False
    assert result["data"]["train_images"] == 6
    for side in ("pipeline", "in-memory"):
        assert len(result["sides"][side]["epoch_seconds"]) == 1
    expected = result["pipeline_images_per_second"] / result["in_memory_images_per_second"]
    assert result["ratio"] == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "0"], "expected images >= 1, got 0"),
        (["--epochs", "0"], "expected epochs >= 1, got 0"),
        (["--image-size", "-4"], "expected image_size >= 1, got -4"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_use_the_shared_ham10000_jpegs_when_present():
    settings = bench.parse_args([])
    expected = "ham10000:" if (bench.SHARED_HAM10000 / "HAM10000_metadata.csv").is_file() else "synthetic:"
    assert settings.dataset.startswith(expected)
