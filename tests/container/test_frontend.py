"""The front end in the project's image: `serve` as uid 10001 with a read-only root, a tmpfs /tmp and
no capabilities, on the tests' tiny model repository mounted read-only, reached over a loopback port."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.container.containers import predict, serve_options
from tests.container.images import podman

# The first test here usually waits for the image build (6-7 minutes cold on 2 cores), inside its timeout.
pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

GRACE_SECONDS = 30  # gunicorn's graceful_timeout (medrobust/web_server.py)


@pytest.fixture(scope="module")
def frontend(medrobust_image, tiny_repo):
    from tests.container import containers

    container = containers.run(medrobust_image.tag, options=serve_options(tiny_repo), publish=(8000,))
    try:
        container.wait_for(8000, "/readyz")
        yield container
    finally:
        container.remove()


def inside(container, code: str) -> str:
    """Run Python in the running container (as its user) and return what it printed."""
    return podman("exec", container.name, "python", "-c", code).stdout


def test_runs_as_uid_10001_without_capabilities_on_a_read_only_root(frontend):
    assert inside(frontend, "import os; print(os.getuid(), os.getgid())").split() == ["10001", "10001"]
    status = inside(frontend, "print(open('/proc/1/status').read())")
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    assert int(effective, 16) == 0, f"expected no effective capabilities, got CapEff {effective}"
    written = podman("exec", frontend.name, "python", "-c", "open('/home/medrobust/probe', 'w')", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr, written
    log = frontend.logs()
    # gunicorn's control socket under $HOME, and the repository's files, were the two things a
    # read-only root and another uid broke.
    for unwanted in ("control socket", "control server", "permissionerror", "traceback"):
        assert unwanted not in log.lower(), f"expected a clean log, got {unwanted!r} in:\n{log}"


def test_a_held_in_image_gets_a_prediction_with_an_overlay(frontend, tiny_repo, held_in_png):
    url = frontend.url(8000, f"/api/v1/models/{tiny_repo.attention}/predict")
    status, body = predict(url, held_in_png)
    assert status == 200, body
    assert body["model"] == tiny_repo.attention and body["version"] >= 1
    class_names = _class_names(tiny_repo)
    assert list(body["probabilities"]) == class_names and body["label"] in class_names, body
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == tuple(body["overlay_size"]), (overlay.format, overlay.size)
    assert np.asarray(overlay).std() > 0, "expected a heatmap over the image, got a flat overlay"


def test_the_api_refuses_a_request_without_the_token(frontend, tiny_repo, held_in_png):
    status, body = predict(frontend.url(8000, f"/api/v1/models/{tiny_repo.attention}/predict"), held_in_png, token=None)
    assert status == 401 and body["error"]["code"], body


def test_metrics_are_on_their_own_unpublished_port(frontend):
    metrics = inside(frontend, "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9102/metrics').read().decode())")
    assert "medrobust_" in metrics
    published = podman("port", frontend.name).stdout
    assert "9102" not in published and "8000/tcp" in published, published
    with pytest.raises(urllib.error.HTTPError) as api_port:
        urllib.request.urlopen(frontend.url(8000, "/metrics"), timeout=10)
    api_port.value.close()
    assert api_port.value.code == 404


def test_the_images_healthcheck_passes(frontend):
    check = podman("healthcheck", "run", frontend.name, check=False)
    assert check.returncode == 0, f"expected the HEALTHCHECK to pass, got {check.returncode}: {check.stdout}{check.stderr}"
    assert json.loads(podman("inspect", "--format", "{{json .Config.Healthcheck}}", frontend.name).stdout)["Test"][-1].count("/healthz") == 1


def test_sigterm_stops_it_within_the_grace_period_losing_no_request(medrobust_image, tiny_repo, held_in_png, start):
    container = start(options=serve_options(tiny_repo), publish=(8000,))
    container.wait_for(8000, "/readyz")
    url = container.url(8000, f"/api/v1/models/{tiny_repo.baseline}/predict")
    answers: list[tuple[int, dict] | BaseException] = []

    def client() -> None:
        try:
            answers.extend(predict(url, held_in_png) for _ in range(3))
        except BaseException as exc:  # noqa: BLE001  (reported by the assertion below)
            answers.append(exc)

    requests = threading.Thread(target=client)
    requests.start()
    time.sleep(0.5)  # the first request is in flight (the worker loads the model for it)
    started = time.monotonic()
    podman("kill", "--signal", "TERM", container.name)
    waited = podman("wait", container.name, timeout=GRACE_SECONDS + 30).stdout.strip()
    stopped_after = time.monotonic() - started
    requests.join(timeout=60)
    assert stopped_after < GRACE_SECONDS, f"expected a stop within {GRACE_SECONDS} s, took {stopped_after:.1f} s"
    assert waited == "0", f"expected exit status 0 after SIGTERM, got {waited}:\n{container.logs()}"
    assert answers and not isinstance(answers[0], BaseException), answers
    assert answers[0][0] == 200, f"expected the request in flight to be answered, got {answers[0]}"


def _class_names(tiny_repo) -> list:
    card_path = next((tiny_repo.path / tiny_repo.attention).glob("*/assets.extra/model_card.json"))
    return json.loads(card_path.read_text())["class_names"]
