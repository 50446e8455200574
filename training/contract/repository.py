"""The model repository as TF Serving polls it: `<repo>/<model>/<version>/` plus `models.config`.

Versions appear atomically (written beside, then renamed into place) so a server polling the
repository never loads half a version; numbers only ever increase. Everything published is
world-readable (folders 0755, files 0644): the servers reading a repository (the front end as uid
10001, TF Serving, the audit) run as other users than whoever exported into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.contract.card import BACKBONES, read_card

if TYPE_CHECKING:
    # tensorflow_serving ships no type information: the proto class is Any to the checker.
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

MODEL_NAME = re.compile(rf"^[a-z0-9_]+-({'|'.join(BACKBONES)})-(attention|baseline)$")
WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
MODELS_CONFIG = "models.config"
READABLE_DIR, READABLE_FILE = 0o755, 0o644


@dataclass(frozen=True)
class RepoModel:
    """One model folder: its versions (ascending) and the newest version's card."""

    name: str
    path: Path
    versions: tuple[int, ...]
    card: dict[str, Any]

    @property
    def latest(self) -> int:
        return self.versions[-1]


def versions_of(model_dir: Path) -> tuple[int, ...]:
    """Complete versions in a model folder, ascending (TF Serving ignores non-numeric names)."""
    if not model_dir.is_dir():
        return ()
    return tuple(sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()))


def list_models(repo: str | os.PathLike[str]) -> tuple[RepoModel, ...]:
    """Every model in the repository that has at least one complete version, by name."""
    root = Path(repo)
    if not root.is_dir():
        return ()
    found = []
    for child in sorted(root.iterdir()):
        if not MODEL_NAME.match(child.name):
            continue
        versions = versions_of(child)
        if versions:
            found.append(RepoModel(child.name, child, versions, read_card(child / str(versions[-1]))))
    return tuple(found)


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    """Serialise writers (two trainings exporting at once must not take the same version)."""
    _make_readable_dir(repo)
    with open(repo / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_version(repo: Path, model: str, staged: Path) -> tuple[int, Path]:
    """Rename a fully written SavedModel folder into place as the next version; returns it."""
    if not MODEL_NAME.match(model):
        raise ValueError(f"model names are <task>-<{'|'.join(BACKBONES)}>-<attention|baseline>, got {model!r}")
    model_dir = repo / model
    _make_readable_dir(model_dir)
    version = (versions_of(model_dir) or (0,))[-1] + 1
    target = model_dir / str(version)
    # mkdtemp made `staged` 0700 and the process's umask decided its files' modes: open both up
    # before the version becomes visible, so no server ever sees it unreadable.
    for root, _dirs, files in os.walk(staged):
        os.chmod(root, READABLE_DIR)
        for name in files:
            os.chmod(os.path.join(root, name), READABLE_FILE)
    os.rename(staged, target)  # atomic on one filesystem: staged lives inside the repository
    return version, target


def staging_dir(repo: Path) -> Path:
    """A fresh folder inside the repository (same filesystem, so the final rename is atomic)."""
    _make_readable_dir(repo)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=repo))


def _make_readable_dir(path: Path) -> None:
    """Create `path` world-readable whatever the umask; an existing folder (perhaps another
    user's, such as a mounted volume) is left as its owner made it."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return
    os.chmod(path, READABLE_DIR)


def read_models_config(repo: str | os.PathLike[str]) -> ModelServerConfig | None:
    """The repository's `models.config` as a TF Serving `ModelServerConfig` proto; None without one."""
    path = Path(repo) / MODELS_CONFIG
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        config: ModelServerConfig = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        return config
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: expected a TF Serving ModelServerConfig in text format, got: {exc}") from None


def version_labels(repo: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """The version labels (TF Serving's `version_labels`, e.g. `stable` -> 3) that the repository's
    `models.config` gives each model; {} when there is no `models.config`.

    Labels are written there by hand, as TF Serving's documentation has it, so that `?version=stable`
    means the same version to TF Serving and to the embedded backend, which reads them from here.
    """
    config = read_models_config(repo)
    return config_labels(config) if config is not None else {}


def config_labels(config: ModelServerConfig) -> dict[str, dict[str, int]]:
    """The version labels of each model in a `ModelServerConfig` proto that has any."""
    return {c.name: dict(c.version_labels) for c in config.model_config_list.config if c.version_labels}


def models_config_text(repo: str | os.PathLike[str], serving_root: str | None = None) -> str:
    """TF Serving's ModelServerConfig (text proto) listing every model in the repository.

    `serving_root` is where the repository is mounted in the TF Serving container (for example
    `/models`); by default the repository's own absolute path. Each model serves its newest two
    versions. Version labels already in `models.config` are kept while their version exists, and
    a labelled version stays loaded (TF Serving refuses a label on a version it does not serve).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    root = (serving_root or str(Path(repo).resolve())).rstrip("/")
    labels = version_labels(repo)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()  # an empty list, not an empty file, when there is no model yet
    for m in list_models(repo):
        entry = config.model_config_list.config.add(name=m.name, base_path=f"{root}/{m.name}", model_platform="tensorflow")
        kept = {label: v for label, v in sorted(labels.get(m.name, {}).items()) if v in m.versions}
        if kept:
            entry.model_version_policy.specific.versions.extend(sorted(set(m.versions[-2:]) | set(kept.values())))
            entry.version_labels.update(kept)
        else:
            entry.model_version_policy.latest.num_versions = 2
    return str(text_format.MessageToString(config))


def write_models_config(repo: str | os.PathLike[str], serving_root: str | None = None) -> Path:
    """Regenerate `<repo>/models.config` atomically."""
    path = Path(repo) / MODELS_CONFIG
    tmp = path.with_name(f".{MODELS_CONFIG}.tmp")
    tmp.write_text(models_config_text(repo, serving_root))
    os.chmod(tmp, READABLE_FILE)
    os.replace(tmp, path)
    return path
