"""The front end and the audit worker, each in a container of the project's image, reach TF Serving
over gRPC.

TF Serving is the tests' stand-in (tests/integration/tfserving_fake.py: TF Serving's gRPC protos
over the tiny repository's SavedModels), running in this process on the host's loopback; the
containers share the host's network to reach it. The official `tensorflow/serving` image, which
deploy/compose.yaml runs, is the production path; no registry is reachable here to pull it.

Both containers get the repository read-only, as compose mounts it, for its models.config (TF
Serving cannot list its models) and the model cards; the models themselves run only in the
stand-in, which counts the Predicts it answers per model. The front end is asked about one model,
the worker audits the other, so each count is one container's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.container import containers
from tests.container.containers import HARDENED, Container, metrics, wait_until
from tests.container.test_frontend import predict, serve_options
from tests.integration.serving import free_ports
from tests.integration.tfserving_fake import FakeTFServing

pytestmark = [pytest.mark.container, pytest.mark.timeout(1500)]

EPSILONS = ("0", "0.01")
START_SECONDS = 180  # gunicorn's workers and the worker import TensorFlow, beside the stand-in loading two models
AUDIT_SECONDS = 300  # one tiny audit over gRPC on a loaded 2-core machine


@dataclass
class Stack:
    fake: FakeTFServing
    frontend: Container
    api_port: int
    frontend_metrics_port: int
    worker: Container
    worker_port: int


def _run_frontend(image: str, tiny_repo, address: str, api_port: int, metrics_port: int) -> Container:
    """`serve` as compose runs it with TF Serving, on loopback ports of the host's network (the
    image's healthcheck asks port 8000: left out)."""
    return containers.run(
        image, "serve", "--model-repo", "/models", "--tf-serving", address, "--host", "127.0.0.1",
        "--port", str(api_port), "--metrics-port", str(metrics_port),
        options=(*serve_options(tiny_repo), "--no-healthcheck"), host_network=True,
    )


def _run_worker(image: str, tiny_repo, address: str, port: int) -> Container:
    """The audit worker with TF Serving (the repository comes from the image's MEDROBUST_MODEL_REPO,
    as in compose), one tiny audit of the baseline at start."""
    return containers.run(
        image, "audit", "worker", "--tf-serving", address, "--dataset", tiny_repo.dataset_spec,
        "--models", tiny_repo.baseline, "--now", "--samples", "8", "--epsilons", *EPSILONS, "--steps", "2",
        "--batch-size", "8", "--database-url", "sqlite:////tmp/audits.sqlite", "--artefacts-dir", "/tmp/artefacts",
        "--no-progress", "--metrics-port", str(port),
        options=(*HARDENED, "--no-healthcheck", "--volume", f"{tiny_repo.path}:/models:ro",
                 "--env", "MEDROBUST_AUDIT_METRICS_HOST=127.0.0.1"),
        host_network=True,
    )


@pytest.fixture(scope="module")
def stack(medrobust_image, tiny_repo):
    grpc_port, api_port, frontend_metrics_port, worker_port = free_ports(4)
    address = f"127.0.0.1:{grpc_port}"
    started: list[Container] = []
    fake = None
    try:
        # The front end starts first: it is unready until its backend answers, and imports
        # TensorFlow while the stand-in loads the models.
        started.append(_run_frontend(medrobust_image.tag, tiny_repo, address, api_port, frontend_metrics_port))
        fake = FakeTFServing(tiny_repo.path / "models.config")
        fake.start(grpc_port)
        # The worker's first audit asks TF Serving at once: it starts once the stand-in answers.
        started.append(_run_worker(medrobust_image.tag, tiny_repo, address, worker_port))
        frontend, worker = started
        frontend.wait_for(api_port, "/readyz", seconds=START_SECONDS)
        worker.wait_for(worker_port, "/healthz", seconds=START_SECONDS)
        yield Stack(fake, frontend, api_port, frontend_metrics_port, worker, worker_port)
    finally:
        containers.remove_all(started)
        if fake is not None:
            fake.stop()


def test_the_front_end_is_ready_with_every_model_available_in_tf_serving(stack, tiny_repo):
    body = json.loads(stack.frontend.wait_for(stack.api_port, "/readyz"))
    assert body["backend"] == "tfserving", body
    assert body["models"] == dict.fromkeys(tiny_repo.models, "AVAILABLE"), body


def test_a_held_in_image_is_predicted_by_the_served_model(stack, tiny_repo, held_in_png):
    model = tiny_repo.attention
    before = stack.fake.predicted[model]
    status, body = predict(stack.frontend.url(stack.api_port, f"/api/v1/models/{model}/predict"), held_in_png)
    assert status == 200, f"{body}\n{stack.frontend.logs()}"
    assert body["model"] == model and body["version"] == max(stack.fake.servables[model]), body
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4), body
    assert stack.fake.predicted[model] > before, f"expected the stand-in to answer {model}'s Predicts, got {stack.fake.predicted}"
    timed = [
        s for s in metrics(stack.frontend, stack.frontend_metrics_port)
        if s.name == "medrobust_backend_request_duration_seconds_count" and s.value > 0
    ]
    assert timed and {s.labels["backend"] for s in timed} == {"tfserving"}, f"expected calls to the tfserving backend timed, got {timed}"


def test_the_worker_audits_a_model_served_by_tf_serving(stack, tiny_repo):
    model = tiny_repo.baseline
    figures = wait_until(lambda: _robust_accuracy(stack.worker, stack.worker_port, model), seconds=AUDIT_SECONDS,
                         expected=f"the robust accuracy of {model} at {EPSILONS} on the worker's /metrics", context=stack.worker.logs)
    assert all(0.0 <= value <= 1.0 for value in figures.values()), figures
    assert stack.fake.predicted[model] > 0, f"expected the stand-in to answer the audit's Predicts, got {stack.fake.predicted}"
    log = stack.worker.logs()
    assert " ERROR " not in log and "Traceback" not in log, log


def _robust_accuracy(worker: Container, port: int, model: str) -> dict[str, float]:
    """epsilon -> robust accuracy of `model` on the worker's /metrics, once every epsilon is there
    (empty until then); fails at once if the worker exits or its run fails."""
    assert worker.state().get("Running"), f"expected the worker to keep running:\n{worker.logs()}"
    log = worker.logs()
    assert "ERROR audit.runner" not in log, f"expected the audit run to succeed, got:\n{log}"
    figures = {
        s.labels["epsilon"]: s.value for s in metrics(worker, port)
        if s.name == "medrobust_audit_robust_accuracy" and s.labels["model"] == model
    }
    return figures if set(figures) == set(EPSILONS) else {}
