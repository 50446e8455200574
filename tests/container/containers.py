"""Running the project's image under podman for a test: one container, its published ports on
loopback, its log, and a stop that a failing test cannot skip."""

from __future__ import annotations

import itertools
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from tests.container.images import podman

# Every medrobust container in the image's own stance: read-only root, a tmpfs /tmp (gunicorn's and
# Prometheus' multiprocess files), no capabilities, no privilege escalation; the image's user 10001.
HARDENED = ("--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
_names = itertools.count()


@dataclass
class Container:
    name: str

    def port(self, inside: int) -> int:
        """The loopback port on the host that publishes the container's port `inside`."""
        published = podman("port", self.name, f"{inside}/tcp").stdout.strip()
        return int(published.rsplit(":", 1)[1])

    def url(self, inside: int, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port(inside)}{path}"

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def wait_for(self, inside: int, path: str, *, seconds: float = 180, status: int = 200) -> bytes:
        """GET `path` on port `inside` until it answers `status`; fails with the container's log."""
        deadline = time.monotonic() + seconds
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.state().get("Running"):
                raise AssertionError(f"expected {self.name} to keep running, it exited ({self.state()}):\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url(inside, path), timeout=10) as answer:
                    if answer.status == status:
                        return answer.read()
                    last = f"status {answer.status}"
            except urllib.error.HTTPError as exc:
                with exc:  # an error answer holds its connection until closed
                    last = f"status {exc.code}: {exc.read()[:300]!r}"
                if exc.code == status:
                    return b""
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = repr(exc)
            time.sleep(1)
        raise AssertionError(f"expected {path} on {self.name}:{inside} to answer {status} within {seconds:g} s, got {last}:\n{self.logs()}")

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False)


def run(image: str, *args: str, options: tuple[str, ...] = (), publish: tuple[int, ...] = ()) -> Container:
    """Start `image` detached with `args` as its command; `publish`ed ports go to random loopback ports."""
    name = f"medrobust-test-{os.getpid()}-{next(_names)}"
    ports = [arg for inside in publish for arg in ("--publish", f"127.0.0.1::{inside}")]
    podman("run", "--detach", "--name", name, *ports, *options, image, *args)
    return Container(name)
