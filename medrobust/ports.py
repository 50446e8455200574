"""Whether this process can listen where it was told to, asked before gunicorn starts.

gunicorn meets a port in use by retrying for five seconds, logging `Connection in use` each time,
then exits; a metrics port in use fails later still, inside a hook. One line naming the flag is
what a person can act on.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from medrobust.commands import StartupError
from training.contract.config import ServiceConfig, env_name


@dataclass(frozen=True)
class Listen:
    """An address a command will listen on, with the flag and variable that set its port."""

    host: str
    port: int
    flag: str
    variable: str


def front_end_listens(config: ServiceConfig) -> tuple[Listen, Listen]:
    """The API's address and /metrics' address of `serve` and `up`."""
    return (
        Listen(config.host, config.port, "--port", env_name(ServiceConfig, "port")),
        Listen(config.metrics_host or config.host, config.metrics_port, "--metrics-port", env_name(ServiceConfig, "metrics_port")),
    )


def check_free(*listens: Listen) -> None:
    """Raise StartupError, naming the flag, for the first address that cannot be listened on."""
    for listen in listens:
        _check_one(listen)


def _check_one(listen: Listen) -> None:
    if listen.port == 0:
        return  # the system picks a free port
    host = listen.host.strip("[]")  # "[::1]" is written for URLs; the socket wants "::1"
    where = f"{listen.host}:{listen.port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"expected an address this machine can listen on, got {listen.host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        # As gunicorn and prometheus_client bind: a port whose last connection lingers in TIME_WAIT
        # is free to them, and must not be called busy here.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"{listen.flag}: expected a free port, got {listen.port}: {where} is in use by another process; "
                    f"choose another with {listen.flag} (or {listen.variable})"
                ) from None
            raise StartupError(f"{listen.flag}: cannot listen on {where}: {exc.strerror}") from None
