"""Version labels in `models.config`: read for the embedded backend, kept when exports rewrite the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from training.contract import repository
from training.contract.card import CARD_PATH


def _model(repo: Path, name: str, versions: range) -> None:
    for v in versions:
        card = repo / name / str(v) / CARD_PATH
        card.parent.mkdir(parents=True)
        card.write_text(json.dumps({"name": name, "version": v}))


def _parsed(repo: Path) -> dict[str, model_server_config_pb2.ModelConfig]:
    return {c.name: c for c in repository.read_models_config(repo).model_config_list.config}


def _label(repo: Path, model: str, **labels: int) -> None:
    """Add labels by hand, as a TF Serving operator edits models.config."""
    path = repo / repository.MODELS_CONFIG
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    for entry in config.model_config_list.config:
        if entry.name == model:
            entry.version_labels.update(labels)
    path.write_text(text_format.MessageToString(config))


def test_without_a_config_or_labels_each_model_serves_its_newest_two(tmp_path):
    assert repository.version_labels(tmp_path) == {}
    _model(tmp_path, "derm-resnet50-baseline", range(1, 4))
    repository.write_models_config(tmp_path, "/models")
    entry = _parsed(tmp_path)["derm-resnet50-baseline"]
    assert entry.base_path == "/models/derm-resnet50-baseline"
    assert entry.model_version_policy.latest.num_versions == 2 and not entry.version_labels
    assert repository.version_labels(tmp_path) == {}


def test_an_empty_repository_gets_an_empty_model_list_not_an_empty_file(tmp_path):
    repository.write_models_config(tmp_path)
    config = repository.read_models_config(tmp_path)
    assert config.HasField("model_config_list") and not config.model_config_list.config


def test_labels_survive_a_rewrite_and_their_versions_stay_served(tmp_path):
    _model(tmp_path, "derm-resnet50-attention", range(1, 3))
    _model(tmp_path, "derm-resnet50-baseline", range(1, 3))
    repository.write_models_config(tmp_path)
    _label(tmp_path, "derm-resnet50-attention", stable=1, canary=2, retired=7)
    assert repository.version_labels(tmp_path)["derm-resnet50-attention"] == {"stable": 1, "canary": 2, "retired": 7}

    _model(tmp_path, "derm-resnet50-attention", range(3, 5))  # two new exports, then the file is rewritten
    repository.write_models_config(tmp_path)
    entries = _parsed(tmp_path)
    labelled = entries["derm-resnet50-attention"]
    assert dict(labelled.version_labels) == {"stable": 1, "canary": 2}  # "retired" names no version on disk
    assert list(labelled.model_version_policy.specific.versions) == [1, 2, 3, 4]  # newest two and the labelled
    assert entries["derm-resnet50-baseline"].model_version_policy.latest.num_versions == 2


def test_a_label_with_quotes_is_written_as_valid_text_proto(tmp_path):
    _model(tmp_path, "derm-resnet50-baseline", range(1, 2))
    repository.write_models_config(tmp_path)
    _label(tmp_path, "derm-resnet50-baseline", **{'say "hi"': 1})
    repository.write_models_config(tmp_path)
    assert repository.version_labels(tmp_path) == {"derm-resnet50-baseline": {'say "hi"': 1}}


def test_a_broken_config_is_an_error_that_names_the_file(tmp_path):
    (tmp_path / repository.MODELS_CONFIG).write_text("model_config_list { config { name: ")
    with pytest.raises(ValueError, match=r"models.config: expected a TF Serving ModelServerConfig in text format"):
        repository.version_labels(tmp_path)
