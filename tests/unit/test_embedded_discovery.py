"""Unknown model names: a bounded number of repository scans, and never a switch to an unloaded version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service import embedded
from service.embedded import EmbeddedPredictor
from training.contract import repository
from training.contract.card import CARD_PATH
from training.contract.errors import ModelNotFound


def _version(repo: Path, name: str, version: int) -> None:
    card = repo / name / str(version) / CARD_PATH
    card.parent.mkdir(parents=True)
    card.write_text(json.dumps({"name": name, "input_size": [32, 32], "num_classes": 2}))


@pytest.fixture
def scans(monkeypatch):
    counted = []
    real = repository.list_models

    def counting(repo):
        counted.append(repo)
        return real(repo)

    monkeypatch.setattr(repository, "list_models", counting)
    return counted


def test_fifty_unknown_names_scan_the_repository_once(tmp_path, scans):
    _version(tmp_path, "demo-resnet50-baseline", 1)
    predictor = EmbeddedPredictor(tmp_path, poll_seconds=3600)
    predictor.refresh()
    before = len(scans)
    for i in range(50):
        with pytest.raises(ModelNotFound):
            predictor.model_info(f"nope-resnet50-baseline{i}")
    assert len(scans) - before == 1


def test_a_new_model_is_found_after_the_rescan_interval(tmp_path, scans, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(embedded.time, "monotonic", lambda: clock[0])
    _version(tmp_path, "demo-resnet50-baseline", 1)
    predictor = EmbeddedPredictor(tmp_path, poll_seconds=3600)
    predictor.refresh()
    with pytest.raises(ModelNotFound):
        predictor.model_info("new-resnet50-attention")
    _version(tmp_path, "new-resnet50-attention", 1)
    with pytest.raises(ModelNotFound):  # within the interval: no second scan
        predictor.model_info("new-resnet50-attention")
    clock[0] += embedded.RESCAN_SECONDS
    assert predictor.model_info("new-resnet50-attention").latest == 1


def test_an_unknown_name_never_switches_a_known_model_to_an_unloaded_version(tmp_path):
    _version(tmp_path, "demo-resnet50-baseline", 1)
    predictor = EmbeddedPredictor(tmp_path, poll_seconds=3600)
    predictor.refresh()
    _version(tmp_path, "demo-resnet50-baseline", 2)  # exported, not yet loaded by the poller
    with pytest.raises(ModelNotFound):
        predictor.model_info("unknown-resnet50-baseline")
    assert predictor.model_info("demo-resnet50-baseline").latest == 1
