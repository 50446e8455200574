"""`medrobust serve` as a benchmark starts it: its own API and metrics ports, its output kept in a file.

Each port is picked free, the metrics port included: the default (9102) is shared by every front
end on the machine, and a second one there exits at start. The output is kept so a front end that
never answers says why instead of "did not start".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Frontend:
    """A running `medrobust serve`; `port` is its API, `metrics_port` its master's /metrics."""

    def __init__(self, args: list[str], work: Path, env: dict[str, str] | None = None):
        self.port, self.metrics_port = free_port(), free_port()
        self.log = work / "serve.log"
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        environment.pop("MEDROBUST_API_TOKEN", None)
        with open(self.log, "wb") as log:
            # In this process's session: a benchmark's floor and its server are scheduled alike.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medrobust", "serve", *args, "--host", "127.0.0.1",
                 "--port", str(self.port), "--metrics-port", str(self.metrics_port)],
                env=environment, stdout=log, stderr=subprocess.STDOUT,
            )

    def exited(self) -> bool:
        return self.process.poll() is not None

    def failure(self, what: str) -> SystemExit:
        """`what`, with the end of the server's output, to raise."""
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        status = "" if self.process.poll() is None else f" (exit status {self.process.returncode})"
        return SystemExit(f"{what}{status}; `medrobust serve` printed:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
