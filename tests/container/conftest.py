"""Fixtures of the container tests: podman (or a skip saying why not), the project's image built
once per session, and containers that are removed whatever the test's outcome."""

from __future__ import annotations

import io
import shutil

import pytest

from tests.conftest import TINY_DATASET
from tests.container import containers, images


@pytest.fixture(scope="session")
def podman_engine() -> None:
    """Skips the container tests where no container engine runs (a developer machine without podman)."""
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"container tests need {tool}, which is not installed (.ci/run installs podman, runc and mmdebstrap)")
    info = images.podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        pytest.skip(f"container tests need a working podman; `podman info` failed: {info.stderr.strip()[-500:]}")


@pytest.fixture(scope="session")
def medrobust_image(podman_engine, request) -> images.Built:
    """The project's image, built from its Dockerfile on the Debian stand-in base (once per machine:
    the workers of a parallel run and .ci/run's early build take turns, and all but the first find
    podman's layers cached)."""
    with images.build_lock():
        built = images.project_image(images.base_image())
    # The size deploy/README.md reports, and the build's share of CI's time, in every run's output.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"image {built.tag}: {built.size_bytes / 1e9:.2f} GB, built in {built.seconds:.0f} s")
    return built


@pytest.fixture(scope="session")
def postgres_image(podman_engine, request) -> images.Built:
    """Debian's PostgreSQL on the project's stand-in base, holding the audit store's database (built
    once, under the project image's lock: both make that base when it is missing)."""
    with images.build_lock():
        return images.postgres_image(images.base_image())


@pytest.fixture(scope="session")
def prometheus_image(podman_engine) -> images.Built:
    """Debian's Prometheus in prom/prometheus' shape, for compose's `prometheus` service."""
    with images.build_lock():
        return images.prometheus_image(images.base_image())


@pytest.fixture
def start(medrobust_image):
    """`start(*args, options=..., publish=..., host_network=..., image=...)`: a container of the
    project's image by default; every one is removed when the test ends."""
    started: list[containers.Container] = []

    def run(*args: str, image: str | None = None, **kwargs) -> containers.Container:
        container = containers.run(image or medrobust_image.tag, *args, **kwargs)
        started.append(container)
        return container

    yield run
    containers.remove_all(started)


@pytest.fixture(scope="session")
def held_in_png() -> bytes:
    """An image the tiny models were trained on, as a client would upload it."""
    from PIL import Image

    from training.datasets import load_dataset

    image = load_dataset(TINY_DATASET, seed=0).train.images[0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
