"""The `medrobust` console command: one parser, one subcommand per capability.

Each package contributes its subcommands through a `register(subparsers)` function in its own
`cli` module. Those modules import nothing heavy at import time, so `medrobust --help` is instant;
the work (and TensorFlow) is imported inside each command's handler.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medrobust import __version__

# Order here is the order `medrobust --help` lists the commands in.
_COMMAND_MODULES = ("training.cli", "service.cli", "audit.cli", "medrobust.up", "medrobust.reproduce")


class UsageError(Exception):
    """A command was given arguments it cannot work with; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medrobust",
        description="Train, serve, explain and audit the adversarial robustness of medical image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"medrobust {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package not built yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"medrobust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
