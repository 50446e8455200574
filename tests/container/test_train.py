"""`train` in the project's image writes a new version into a mounted repository, and the front end,
running all along in another container as uid 10001, serves it without a restart.

The training runs as root under umask 077, as a hardened host or a root CI job would: what it
exports must still be readable by the front end's user (the bug was every version folder 0700).
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.container.containers import TOKEN, predict, serve_options
from tests.container.images import podman

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

TRAIN_SECONDS = 1200  # TensorFlow's import, a ResNet-50 at 64x64 for one short epoch, the export
PICKUP_SECONDS = 60


def _model(frontend, name: str) -> dict:
    request = urllib.request.Request(frontend.url(8000, f"/api/v1/models/{name}"), headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_a_version_trained_in_the_image_is_served_without_a_restart(start, copy_repo, tiny_repo):
    repo = copy_repo()
    model = tiny_repo.attention
    options = tuple(o.replace(str(tiny_repo.path), str(repo)) for o in serve_options(tiny_repo))
    frontend = start("serve", "--model-repo", "/models", "--host", "0.0.0.0", "--port", "8000", "--poll-seconds", "2",
                     options=options, publish=(8000,))
    frontend.wait_for(8000, "/readyz")
    before = _model(frontend, model)["latest"]

    train = start(
        "train", "--task", tiny_repo.task, "--dataset", tiny_repo.dataset_spec, "--backbone", "resnet50", "--attention",
        "--image-size", str(tiny_repo.image_size), "--epochs", "1", "--limit", "32", "--batch-size", "16",
        "--workdir", "/tmp/work", "--serving-root", "/models", "--model-repo", "/models",
        options=("--user", "0:0", "--umask", "0077", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                 "--env", "HOME=/tmp", "--no-healthcheck", "--volume", f"{repo}:/models"),
    )
    status = podman("wait", train.name, timeout=TRAIN_SECONDS).stdout.strip()
    assert status == "0", f"expected `train` to exit 0, got {status}:\n{train.logs()}"

    deadline = time.monotonic() + PICKUP_SECONDS
    latest = before
    while latest == before and time.monotonic() < deadline:
        time.sleep(2)
        latest = _model(frontend, model)["latest"]
    assert latest == before + 1, f"expected the front end to pick up version {before + 1}, it serves {latest}:\n{frontend.logs()}"
    status, body = predict(frontend.url(8000, f"/api/v1/models/{model}/predict?version={latest}"), _png(tiny_repo.image_size))
    assert status == 200 and body["version"] == latest, body
    assert podman("inspect", "--format", "{{.State.Running}}", frontend.name).stdout.strip() == "true"
    assert "PermissionError" not in frontend.logs(), frontend.logs()


def _png(size: int) -> bytes:
    from tests.integration.service_images import png

    return png(size, size)
