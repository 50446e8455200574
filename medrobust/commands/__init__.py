"""The `medrobust` subcommands, one module each: parse flags, read the one configuration, build the
parts through `medrobust.compose`, run. Each module's `register(subparsers)` imports nothing heavy,
so `medrobust --help` is instant; the work (and TensorFlow) is imported inside each handler."""


import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A command was given arguments it cannot work with; printed without a traceback."""


class StartupError(Exception):
    """Something the command needs (its database, a server) did not answer; printed without a traceback, exit 1."""


def read_service_config(flags: Mapping[str, Any]):
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value
