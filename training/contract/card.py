"""The model card: the JSON beside every exported SavedModel that tells a server, the front end
and the audit everything about the model besides its weights (classes, input size, signatures)."""

from __future__ import annotations

import enum
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

CARD_PATH = Path("assets.extra") / "model_card.json"


class Backbone(str, enum.Enum):
    """The paper's two backbones; the card's `backbone` and the middle of every model name."""

    RESNET50 = "resnet50"
    INCEPTION_RESNET_V2 = "inception_resnet_v2"


BACKBONES = tuple(b.value for b in Backbone)
# The smallest input each backbone's downsampling still leaves a feature map for. Here, not beside
# the Keras backbones, so that a command can refuse a too small --image-size before importing TensorFlow.
MIN_INPUT_SIZE = {Backbone.RESNET50: 32, Backbone.INCEPTION_RESNET_V2: 75}
CARD_SCHEMA_VERSION = 1


def read_card(version_dir: Path) -> dict[str, Any]:
    """The model card of one exported version."""
    path = version_dir / CARD_PATH
    try:
        card: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: expected a model card beside the SavedModel, found none") from None
    return card


def package_version() -> str:
    """medrobust's release, as installed (pyproject.toml is its one source)."""
    try:
        return importlib.metadata.version("medrobust")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def code_version() -> str:
    """medrobust's release, with the git commit when run from a checkout; stamped on every card."""
    release = package_version()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{release}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return release
