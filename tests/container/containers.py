"""Running the project's image under podman for a test: one container, its published ports on
loopback (or the host's own network), its log, and a stop that a failing test cannot skip."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.container.images import podman

# Every medrobust container in the image's own stance: read-only root, a tmpfs /tmp (gunicorn's and
# Prometheus' multiprocess files), no capabilities, no privilege escalation; the image's user 10001.
HARDENED = ("--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
TOKEN = "container-test-token"  # the API token the front-end containers are started with
_names = itertools.count()
T = TypeVar("T")


def wait_until(check: Callable[[], T], *, seconds: float, expected: str, context: Callable[[], str] = lambda: "") -> T:
    """`check()` every second until it returns something true, which is returned; else an
    AssertionError naming what was `expected`, the last value and `context()` (a log)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"expected {expected} within {seconds:g} s, got {value!r}\n{context()}")
        time.sleep(1)


@dataclass
class Container:
    name: str
    # On the host's network namespace: its ports are the host's own, nothing is published. For
    # servers the tests start on the host's loopback (the TF Serving stand-in), and for ports that
    # must stay the same across `podman restart`.
    host_network: bool = False

    def port(self, inside: int) -> int:
        """The loopback port on the host that publishes the container's port `inside`."""
        if self.host_network:
            return inside
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

    def restart(self, *, stop_seconds: int = 30) -> None:
        """`podman restart`: the same container (its layer, options and command), its process anew."""
        podman("restart", "--time", str(stop_seconds), self.name, timeout=stop_seconds + 60)

    def remove(self) -> None:
        remove_all([self])


def remove_all(containers: Iterable[Container]) -> None:
    """Remove the containers with one `podman rm`: podman stops them in parallel, so a test's
    teardown waits for the slowest, not for the sum."""
    names = [container.name for container in containers]
    if names:
        podman("rm", "--force", "--time", "5", *names, check=False)


def metrics(container: Container, inside: int) -> list:
    """Every sample the container's /metrics on port `inside` exposes, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(container.url(inside, "/metrics"), timeout=10) as answer:
        text = answer.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def run(
    image: str, *args: str, options: tuple[str, ...] = (), publish: tuple[int, ...] = (), host_network: bool = False,
) -> Container:
    """Start `image` detached with `args` as its command; `publish`ed ports go to random loopback
    ports; `host_network`: on the host's network instead (its servers must bind loopback themselves)."""
    if host_network and publish:
        raise ValueError(f"expected either published ports or the host's network, got both (publish={publish})")
    name = f"medrobust-test-{os.getpid()}-{next(_names)}"
    ports = [arg for inside in publish for arg in ("--publish", f"127.0.0.1::{inside}")]
    network = ["--network", "host"] if host_network else []
    podman("run", "--detach", "--name", name, *ports, *network, *options, image, *args)
    return Container(name, host_network)


def import_model_repo(volume: str, repo: Path, scratch: Path) -> None:
    """A copy of the model repository `repo` in the podman volume `volume` (made here), its
    models.config pointing at /models as a deployment's `train` writes it: the volume a compose
    stack or a pod's PersistentVolumeClaim mounts."""
    from training.contract.repository import write_models_config

    copy = scratch / "model-repo"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".lock"))
    write_models_config(copy, "/models")
    archive = scratch / "model-repo.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(copy, arcname=".")
    podman("volume", "create", volume)
    podman("volume", "import", volume, str(archive))


def serve_options(tiny_repo) -> tuple[str, ...]:
    """The image's default command (serve on 0.0.0.0:8000) as compose runs it, on the tiny repository."""
    return (*HARDENED, "--env", f"MEDROBUST_API_TOKEN={TOKEN}", "--volume", f"{tiny_repo.path}:/models:ro")


def predict(url: str, png: bytes, *, token: str | None = TOKEN) -> tuple[int, dict]:
    """POST `png` to a predict URL; the status and the JSON answer, error answers included."""
    headers = {"Content-Type": "image/png"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=png, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
