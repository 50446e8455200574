"""The `medrobust` subcommands, one module each: parse flags, read the one configuration, build the
parts through `medrobust.compose`, run. Each module's `register(subparsers)` imports nothing heavy,
so `medrobust --help` is instant; the work (and TensorFlow) is imported inside each handler.

A subcommand may also set `check` (beside `handler`): a function of the parsed arguments that
raises UsageError for a bad value. `medrobust.cli` calls it before TensorFlow is imported, so a
typo is answered at once, not after the 16-18 s that import takes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.contract.config import ServiceConfig

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A command was given arguments it cannot work with; printed without a traceback."""


class StartupError(Exception):
    """Something the command needs (its database, a server) did not answer; printed without a traceback, exit 1."""


def read_service_config(flags: Mapping[str, Any]) -> ServiceConfig:
    """The front end's ServiceConfig from flags over MEDROBUST_*; a bad value is a UsageError.

    An API without a token beyond loopback is refused unless allowed (see ServiceConfig), and logged
    as a warning when it is.
    """
    from training.contract.config import ServiceConfig, read_config

    try:
        config = read_config(ServiceConfig, flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.open_beyond_loopback:
        log.warning(
            "the API is open: no MEDROBUST_API_TOKEN, and listening on %s (allowed by --allow-anonymous or "
            "MEDROBUST_ALLOW_ANONYMOUS): anyone who reaches the port can predict and read the audits",
            config.host,
        )
    return config


def require_model_repo(repo: Path) -> None:
    """Raise UsageError unless `repo` is a directory (an empty one is a repository without models)."""
    if not repo.is_dir():
        raise UsageError(
            f"--model-repo: expected a model repository directory, got {str(repo)!r} (no such directory): "
            "name one with --model-repo or MEDROBUST_MODEL_REPO, or create it with `medrobust train`"
        )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value
