"""Small helpers for the tests of served models: the backend names, a free local port, plain HTTP."""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request

# The Predictor backends every served-model test runs against (the `predictor` fixture's params).
BACKENDS = ("embedded", "tfserving")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different such ports (held together while drawn, so no two are the same)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def http(
    url: str, *, data: bytes | None = None, content_type: str | None = None, timeout: float = 10, token: str | None = None
) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a POST when `data` is given; HTTP errors are answers, not exceptions."""
    headers = {"Content-Type": content_type} if content_type else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read()
        finally:
            exc.close()  # its socket, else a ResourceWarning surfaces in some later test
