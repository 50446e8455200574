"""What an export publishes is readable by every user: the servers run as other users than the exporter."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from training.contract import repository

MODEL = "derm-resnet50-attention"


@pytest.fixture
def strict_umask():
    """The umask of a hardened host or container (077), under which new files are private by default."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def _modes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(root.rglob("*"))}


def _publish(repo: Path) -> Path:
    """Stage a version as the exporter does (SavedModel files in subfolders, the card) and publish it."""
    staged = repository.staging_dir(repo)
    (staged / "variables").mkdir()
    (staged / "variables" / "variables.index").write_bytes(b"index")
    (staged / "saved_model.pb").write_bytes(b"graph")
    (staged / "assets.extra").mkdir()
    (staged / "assets.extra" / "model_card.json").write_text("{}")
    with repository.locked(repo):
        _, path = repository.publish_version(repo, MODEL, staged)
        repository.write_models_config(repo, "/models")
    return path


def test_a_published_version_is_world_readable_under_a_private_umask(tmp_path, strict_umask):
    repo = tmp_path / "repo"
    version = _publish(repo)

    assert version == repo / MODEL / "1"
    modes = _modes(version)
    expected = {
        "variables": "0o755", "variables/variables.index": "0o644", "saved_model.pb": "0o644",
        "assets.extra": "0o755", "assets.extra/model_card.json": "0o644",
    }
    assert modes == expected, f"expected folders 0755 and files 0644, got {modes}"
    assert oct(stat.S_IMODE(version.stat().st_mode)) == "0o755"
    # The folders an export creates on the way, and the regenerated models.config.
    created = {name: oct(stat.S_IMODE((repo / name).stat().st_mode)) for name in (".", MODEL, repository.MODELS_CONFIG)}
    assert created == {".": "0o755", MODEL: "0o755", repository.MODELS_CONFIG: "0o644"}, created

def test_an_existing_repository_folder_keeps_its_owners_mode(tmp_path, strict_umask):
    """A mounted volume's root belongs to its owner: publishing into it must not chmod it."""
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o770)
    os.chmod(repo, 0o770)
    _publish(repo)
    assert stat.S_IMODE(repo.stat().st_mode) == 0o770
    assert stat.S_IMODE((repo / MODEL / "1").stat().st_mode) == 0o755
