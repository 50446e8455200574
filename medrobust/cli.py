"""The `medrobust` console command: one parser, one subcommand per capability.

Each subcommand is a module of `medrobust.commands` with a `register(subparsers)` function. Those
modules import nothing heavy at import time, so `medrobust --help` is instant; the work (and
TensorFlow) is imported inside each command's handler.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path

from medrobust.commands import StartupError, UsageError
from training.contract.card import package_version

# Order here is the order `medrobust --help` lists the commands in.
_COMMAND_MODULES = tuple(
    f"medrobust.commands.{name}" for name in ("train", "serve", "audit", "db", "up", "reproduce")
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medrobust",
        description="Train, serve, explain and audit the adversarial robustness of medical image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"medrobust {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up chatter (oneDNN, CPU features, cuInit, absl's pre-init notice,
    SavedModel loading warnings) out of a newcomer's terminal; `--verbose` keeps it. Set before
    TensorFlow is imported, which every command does lazily, after this."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # errors still show
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's own start-up notices
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        # No GPU device: skip CUDA's probe, whose failure (cuInit) is logged as an error.
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


# What TensorFlow's C++ side prints while it is imported and probes for devices on a machine
# without a GPU, whatever TF_CPP_MIN_LOG_LEVEL says (these go through absl's logger directly).
_START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "cudart_stub.cc",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "oneDNN custom operations are on",
)
# `serve` and `up` never import TensorFlow in their own process: gunicorn forks its workers from
# it (their workers and `up`'s training child import it quietly themselves).
_TENSORFLOW_COMMANDS = frozenset({"train", "audit", "reproduce"})


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and let it probe its devices with file descriptor 2 captured, then replay
    every captured line that is not known start-up noise: a newcomer sees the banner, progress and
    URLs; a real error or warning from the import still reaches the terminal."""
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe (and its cuInit error) happens here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines(keepends=True):
            if not any(noise in line for noise in _START_UP_NOISE):
                sys.stderr.write(line)
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # Every value is checked before TensorFlow is imported: a typo is answered at once.
        check = getattr(args, "check", None)
        if check is not None:
            check(args)
        if not args.verbose:
            quiet_tensorflow()
            if args.command in _TENSORFLOW_COMMANDS:
                import_tensorflow_quietly()
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"medrobust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"medrobust {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
