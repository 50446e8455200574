"""Fixtures shared by every test: the real data beside the project, and a tiny real model repository."""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

from tests.project import PROJECT, QUICK_TIER, SHARED_DATA  # noqa: E402

TINY_DATASET = "synthetic:240"
TINY_SIZE = 64  # ResNet-50's last block is 2x2 here: the smallest size where attention is not trivial


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-tiers", action="store_true",
        help="run every tier: unit, integration, system and slow (what .ci/run runs); "
        "without it the quick tier runs (unit and fast integration)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # The quick tier is pyproject's `-m QUICK_TIER` (no slow, system or container tests); --all-tiers drops the filter
    # (an explicit -m given after it still narrows the run).
    if config.getoption("--all-tiers") and config.option.markexpr == QUICK_TIER:
        config.option.markexpr = ""


# The modules that take longest on 2 cores (setup and calls, from a CI run's --durations=0), longest first.
# .ci/run hands whole modules to its workers in collection order (--no-loadscope-reorder); started first, they
# run beside the many quick modules instead of ending the run alone on one worker. The tiny repository is built
# once, under a lock, by the first module. The container modules come after the CPU-bound ones: .ci/run builds
# their images in the background from its start, at low priority, and a CI run showed that build still going
# after 12 minutes of busy workers; placed here, they are reached after about 15.
LONGEST_FIRST = (
    "tests/integration/test_service_api.py",  # builds the tiny repository: 3-7 minutes
    "tests/integration/test_reproduce.py",  # trains, exports and audits a grid of two cells
    "tests/integration/test_demo_pair.py",  # trains `up`'s demo pair at 64 px: minutes
    "tests/integration/test_audit_workers_postgres.py",  # three worker processes, one killed, 12 jobs
    "tests/integration/test_audit_attack.py",
    "tests/unit/test_bench_audit.py",
    "tests/integration/test_train_cli.py",
    "tests/unit/test_bench_training.py",
    "tests/integration/test_export_contract.py",
    "tests/integration/test_deploy_live_prometheus.py",
    "tests/integration/test_service_embedded.py",
    "tests/integration/test_audit_sanity.py",
    "tests/integration/test_attacks_reference.py",
    "tests/integration/test_audit_api.py",
    "tests/integration/test_audit_cli.py",
    "tests/container/test_frontend.py",  # the image: 6-14 minutes cold, built in the background meanwhile
    "tests/container/test_train.py",
    "tests/container/test_audit_worker.py",
    "tests/container/test_audit_postgres.py",
    "tests/container/test_compose.py",
    "tests/container/test_kube.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep order


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
def tiny_repo(request, tmp_path_factory) -> TinyRepo:
    """Real exported SavedModels (64x64, 3 synthetic classes), trained for two short epochs.

    Built once per checkout state: the repository is kept in pytest's cache under a hash of the
    code that makes it (training/ and this file), so a second session on unchanged code reuses it
    and a changed exporter always gets fresh models. A fresh clone (CI) builds it once. Tests must
    not write into it; copy it (`copy_repo`) to add versions.
    """
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: built per session
    if cache is None:
        repo = tmp_path_factory.mktemp("tiny-repo")
        _build_tiny_repo(repo)
        return TinyRepo(repo, TINY_DATASET, "demo", TINY_SIZE, "demo-resnet50-baseline", "demo-resnet50-attention")
    root = Path(cache.mkdir("medrobust-tiny-repo"))
    repo = root / _tiny_repo_key()
    # One builder at a time: the workers of a parallel run (pytest -n) share this cache, and a
    # second build would only compete with the first for the same cores.
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_once(root, repo)
    return TinyRepo(repo, TINY_DATASET, "demo", TINY_SIZE, "demo-resnet50-baseline", "demo-resnet50-attention")


def _build_once(root: Path, repo: Path) -> None:
    if not (repo / "demo-resnet50-attention").is_dir():
        # Built beside its final place (one filesystem), then renamed: atomic, so a concurrent
        # session sees a whole repository or none, and pytest's clean-up of old temporary
        # folders by another session can never remove it.
        staged = root / f".building-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        _build_tiny_repo(staged)
        from training.contract.repository import write_models_config

        # models.config names each model's base_path: written for the final place, before the move.
        write_models_config(staged, serving_root=str(repo))
        try:
            staged.rename(repo)
        except OSError:  # another session finished first: use its repository
            shutil.rmtree(staged, ignore_errors=True)


def _tiny_repo_key() -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((PROJECT / "training").rglob("*.py")) + [Path(__file__)]:
        digest.update(str(path.relative_to(PROJECT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build_tiny_repo(repo: Path) -> None:
    from training.datasets import load_dataset
    from training.recipe import Recipe
    from training.workflow import Variant, train_and_export

    dataset = load_dataset(TINY_DATASET, seed=0)
    recipe = Recipe(epochs=2, batch_size=32, learning_rate=0.001, seed=0)
    for attention in (False, True):
        train_and_export(
            dataset, Variant("resnet50", attention), task="demo", image_size=TINY_SIZE, model_repo=repo,
            recipe=recipe, limit=160, verbose=0, log=lambda _msg: None,
        )


@pytest.fixture
def copy_repo(tiny_repo, tmp_path):
    """A private, writable copy of the tiny repository."""
    import shutil

    def make() -> Path:
        target = tmp_path / "repo"
        shutil.copytree(tiny_repo.path, target)
        return target

    return make
