"""The TF Serving backend reads models.config on every call: parsed once per version of the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.tfserving import TFServingPredictor
from training.contract import repository
from training.contract.card import CARD_PATH


def _model(repo: Path, name: str, versions: range) -> None:
    for v in versions:
        card = repo / name / str(v) / CARD_PATH
        card.parent.mkdir(parents=True)
        card.write_text(json.dumps({"name": name, "version": v}))


@pytest.fixture
def parses(monkeypatch) -> list[Path]:
    """Every parse of models.config, by repository."""
    seen: list[Path] = []
    real = repository.read_models_config

    def counted(repo):
        seen.append(Path(repo))
        return real(repo)

    monkeypatch.setattr(repository, "read_models_config", counted)
    return seen


def _backend(repo: Path) -> TFServingPredictor:
    # No RPC is made: names and labels come from the repository (the channel connects lazily).
    return TFServingPredictor("127.0.0.1:9", model_repo=repo)


def test_names_and_labels_are_parsed_once_while_the_file_is_unchanged(tmp_path, parses):
    _model(tmp_path, "derm-resnet50-baseline", range(1, 3))
    repository.write_models_config(tmp_path)
    parses.clear()  # the export's own read, to keep labels
    backend = _backend(tmp_path)
    for _ in range(5):
        assert backend.model_names() == ("derm-resnet50-baseline",)
        assert backend._labelled_version("derm-resnet50-baseline", "stable") is None
    assert len(parses) == 1
    backend.close()


def test_a_rewritten_config_is_seen_on_the_next_call(tmp_path, parses):
    _model(tmp_path, "derm-resnet50-baseline", range(1, 3))
    repository.write_models_config(tmp_path)
    backend = _backend(tmp_path)
    assert backend.model_names() == ("derm-resnet50-baseline",)

    _model(tmp_path, "derm-resnet50-attention", range(1, 2))
    repository.write_models_config(tmp_path)  # an export replaces the file
    parses.clear()
    assert backend.model_names() == ("derm-resnet50-attention", "derm-resnet50-baseline")

    # A label added by hand, as an operator does: same directory entry rewritten in place.
    path = tmp_path / repository.MODELS_CONFIG
    labelled = 'name: "derm-resnet50-baseline"\n    version_labels { key: "stable" value: 1 }'
    path.write_text(path.read_text().replace('name: "derm-resnet50-baseline"', labelled))
    assert backend._labelled_version("derm-resnet50-baseline", "stable") == 1
    assert backend.model_names() == ("derm-resnet50-attention", "derm-resnet50-baseline")
    assert len(parses) == 2  # once per version of the file
    backend.close()


def test_without_models_config_the_repository_directories_are_the_names(tmp_path, parses):
    _model(tmp_path, "derm-resnet50-baseline", range(1, 2))
    backend = _backend(tmp_path)
    assert backend.model_names() == ("derm-resnet50-baseline",)
    _model(tmp_path, "derm-resnet50-attention", range(1, 2))
    assert backend.model_names() == ("derm-resnet50-attention", "derm-resnet50-baseline")
    assert backend._labelled_version("derm-resnet50-baseline", "stable") is None
    assert parses == []
    backend.close()


def test_a_broken_config_is_not_cached_as_good(tmp_path):
    _model(tmp_path, "derm-resnet50-baseline", range(1, 2))
    path = tmp_path / repository.MODELS_CONFIG
    path.write_text("model_config_list { config { name: ")
    backend = _backend(tmp_path)
    with pytest.raises(ValueError, match="models.config"):
        backend.model_names()
    assert backend._labelled_version("derm-resnet50-baseline", "stable") is None  # TF Serving stays the authority on labels
    path.unlink()  # (an export refuses to overwrite a config it cannot read)
    repository.write_models_config(tmp_path)
    assert backend.model_names() == ("derm-resnet50-baseline",)
    backend.close()
