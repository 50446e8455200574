"""Fixtures shared by every test: the real data beside the project, and a tiny real model repository."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
TINY_DATASET = "synthetic:240"
TINY_SIZE = 64  # ResNet-50's last block is 2x2 here: the smallest size where attention is not trivial


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real clinical images); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (it sits beside the project checkout)")
    return SHARED_DATA


@dataclass(frozen=True)
class TinyRepo:
    """A model repository holding briefly trained ResNet-50 baseline and attention models."""

    path: Path
    dataset_spec: str
    task: str
    image_size: int
    baseline: str
    attention: str

    @property
    def models(self) -> tuple[str, str]:
        return (self.baseline, self.attention)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> TinyRepo:
    """Real exported SavedModels (64x64, 3 synthetic classes), trained for two short epochs.

    Session-scoped: exporting ResNet-50 with three signatures takes ~10 s a model. Tests must not
    write into it; copy it (`copy_repo`) to add versions.
    """
    from training.datasets import load_dataset
    from training.recipe import Recipe
    from training.workflow import Variant, train_and_export

    repo = tmp_path_factory.mktemp("tiny-repo")
    dataset = load_dataset(TINY_DATASET, seed=0)
    recipe = Recipe(epochs=2, batch_size=32, learning_rate=0.001, seed=0)
    for attention in (False, True):
        train_and_export(
            dataset, Variant("resnet50", attention), task="demo", image_size=TINY_SIZE, model_repo=repo,
            recipe=recipe, limit=160, verbose=0, log=lambda _msg: None,
        )
    return TinyRepo(repo, TINY_DATASET, "demo", TINY_SIZE, "demo-resnet50-baseline", "demo-resnet50-attention")


@pytest.fixture
def copy_repo(tiny_repo, tmp_path):
    """A private, writable copy of the tiny repository."""
    import shutil

    def make() -> Path:
        target = tmp_path / "repo"
        shutil.copytree(tiny_repo.path, target)
        return target

    return make
