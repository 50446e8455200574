"""deploy/compose.yaml itself, run by podman-compose: the stack's own services in containers of the
project's image, on compose's network, with compose's volumes, ports, healthchecks and hardening.

What cannot run here is replaced by an override file the test writes, which changes images (and
their entrypoints) and, for the audit worker, the size of its audit, and nothing else of compose's:
- `tf-serving`: the tests' TF Serving stand-in (tests/integration/tfserving_fake.py) in the
  project's image, taking compose's own tensorflow_model_server flags, volumes and healthcheck;
- `postgres`: Debian's PostgreSQL on the stand-in base (tests/container/images.py), told to listen on
  compose's network;
- `prometheus`: Debian's Prometheus in prom/prometheus' shape;
- `audit-worker`: 8 images, 2 steps and 2 epsilons, polling for new versions every 2 s (its
  defaults, 256 images over the paper's grid, would take the 2 cores for many minutes). The task's
  dataset and the one model to audit are compose's own variables.
No registry is reachable to pull the official images. Grafana and nginx are left out: Grafana is not
in Debian (the dashboards are checked against a real Prometheus elsewhere), and nginx's image
entrypoint (the template rendering) would need a stand-in of its own; tests/integration runs the
project's nginx configuration with Debian's nginx.

Podman 4.3 ignores compose's `service_healthy` conditions (podman-compose warns) and runs no
healthcheck timers without systemd, so the test starts the backends first and runs each service's
healthcheck itself (`podman healthcheck run`) until it passes, as the timer would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.container.containers import TOKEN, import_model_repo, wait_until
from tests.container.images import POSTGRES_PASSWORD, podman
from tests.project import PROJECT

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

COMPOSE_FILE = PROJECT / "deploy" / "compose.yaml"
BACKENDS = ("tf-serving", "postgres")
SERVERS = ("frontend", "audit-worker", "prometheus")
START_SECONDS = 300  # the stand-in, gunicorn's two workers and the worker each import TensorFlow on 2 cores
SCRAPE_SECONDS = 90  # prometheus.yml scrapes every 15 s
AUDIT_SECONDS = 300  # one tiny audit through the stand-in, beside the rest of the stack, on 2 cores
EPSILONS = ("0", "0.01")
AUDIT = {"MEDROBUST_AUDIT_SAMPLES": "8", "MEDROBUST_AUDIT_STEPS": "2", "MEDROBUST_AUDIT_EPSILONS": ",".join(EPSILONS),
         "MEDROBUST_AUDIT_BATCH_SIZE": "8", "MEDROBUST_AUDIT_POLL_SECONDS": "2"}


@dataclass(frozen=True)
class Compose:
    project: str
    files: tuple[Path, ...]
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "podman_compose", "--project-name", self.project,
                   *(arg for path in self.files for arg in ("--file", str(path))), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                              env=os.environ | self.env, cwd=COMPOSE_FILE.parent)
        if check and done.returncode != 0:
            raise AssertionError(f"expected `podman-compose {' '.join(args)}` to succeed, got {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def logs(self, *services: str, tail: int = 40) -> str:
        """The services' last `tail` log lines (every line with tail=-1)."""
        parts = []
        for service in services:
            done = podman("logs", "--tail", str(tail), self.container(service), check=False)
            parts.append(f"--- {service}:\n{done.stdout}{done.stderr}")
        return "\n".join(parts)

    def healthy(self, service: str) -> bool:
        """Runs the service's own healthcheck once (podman records the result, as its timer would)."""
        return podman("healthcheck", "run", self.container(service), check=False).returncode == 0

    def inspect(self, service: str) -> dict:
        return json.loads(podman("inspect", self.container(service)).stdout)[0]


def _standins(images: dict[str, str]) -> dict:
    """The override: images (with the TF Serving stand-in's entrypoint and code), and the size of
    the worker's audit; nothing else of compose's."""
    return {"services": {
        "tf-serving": {
            "image": images["medrobust"],
            "entrypoint": ["python", "-m", "tests.integration.tfserving_fake"],
            "environment": {"PYTHONPATH": "/src"},
            "volumes": [f"{PROJECT / 'tests'}:/src/tests:ro"],
        },
        "postgres": {"image": images["postgres"], "command": ["-c", "listen_addresses=*"]},
        "prometheus": {"image": images["prometheus"]},
        "audit-worker": {"environment": AUDIT},
    }}


@pytest.fixture(scope="module")
def stack(medrobust_image, postgres_image, prometheus_image, tiny_repo, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("compose")
    override = scratch / "standins.yaml"
    override.write_text(yaml.safe_dump(_standins(
        {"medrobust": medrobust_image.tag, "postgres": postgres_image.tag, "prometheus": prometheus_image.tag})))
    (scratch / "data").mkdir()
    compose = Compose(f"medrobust-test-{os.getpid()}", (COMPOSE_FILE, override), {
        "MEDROBUST_IMAGE": medrobust_image.tag, "MEDROBUST_API_TOKEN": TOKEN,
        "MEDROBUST_DB_PASSWORD": POSTGRES_PASSWORD, "GRAFANA_ADMIN_PASSWORD": "unused-grafana-is-left-out",
        "MEDROBUST_DATA_DIR": str(scratch / "data"),
        # compose's own variables: the audit set of the tiny models' task, and one model audited
        "MEDROBUST_AUDIT_DATASET": tiny_repo.dataset_spec, "MEDROBUST_AUDIT_MODELS": tiny_repo.baseline,
    })
    try:
        # compose's model-repo volume (project-named), filled as `train` in the stack would
        import_model_repo(f"{compose.project}_model-repo", tiny_repo.path, scratch)
        compose("up", "--detach", *BACKENDS)
        for service in BACKENDS:
            wait_until(lambda s=service: compose.healthy(s), seconds=START_SECONDS, expected=f"{service} healthy",
                       context=lambda s=service: compose.logs(s))
        compose("up", "--detach", *SERVERS)
        yield compose
    finally:
        compose("down", "--volumes", "--timeout", "10", check=False)
        # made here, without the labels by which podman-compose finds the volumes it made
        podman("volume", "rm", "--force", f"{compose.project}_model-repo", check=False)


def test_every_service_reaches_healthy_through_its_own_healthcheck(stack):
    for service in (*BACKENDS, *SERVERS):
        wait_until(lambda s=service: stack.healthy(s), seconds=START_SECONDS, expected=f"{service} healthy",
                   context=lambda s=service: stack.logs(s))
        state = stack.inspect(service)["State"]
        assert (state.get("Health") or state["Healthcheck"])["Status"] == "healthy", (service, state)
    # model-repo-init ran first and handed the volume to the image's user.
    assert stack.inspect("model-repo-init")["State"]["ExitCode"] == 0


def test_the_containers_have_composes_hardening_volumes_and_ports(stack):
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for service in (*BACKENDS, *SERVERS):
        spec, container = services[service], stack.inspect(service)
        config, host = container["Config"], container["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert "no-new-privileges" in " ".join(host["SecurityOpt"]), service
        assert len(host["CapDrop"]) > 10 and not host["CapAdd"], (service, host["CapAdd"])
        volumes = {mount["Destination"] for mount in container["Mounts"] if mount["Type"] in ("volume", "bind")}
        # SOURCE:TARGET[:MODE], the source perhaps a ${VARIABLE:-default}
        wanted = {re.sub(r"\$\{[^}]*\}", "source", volume).split(":")[1] for volume in spec.get("volumes", [])}
        # the stand-in's own code is the override's one addition
        assert wanted <= volumes <= wanted | {"/src/tests"}, (service, wanted, volumes)
        # as mounted (podman reports a tmpfs below a symbolic link, /var/run, nowhere else)
        mounts = podman("exec", stack.container(service), "cat", "/proc/mounts").stdout.splitlines()
        tmpfs = {fields[1] for fields in map(str.split, mounts) if fields[2] == "tmpfs"}
        wanted_tmpfs = {path.replace("/var/run/", "/run/", 1) for path in spec.get("tmpfs", [])}
        assert wanted_tmpfs <= tmpfs, (service, wanted_tmpfs - tmpfs)
        published = {
            f"{binding['HostIp']}:{binding['HostPort']}:{inside.split('/')[0]}"
            for inside, bindings in (host.get("PortBindings") or {}).items() for binding in bindings or ()
        }
        assert published == set(spec.get("ports", [])), (service, published)
        assert config["Healthcheck"]["Test"][1:] == spec["healthcheck"]["test"][1:], service
    # Every medrobust process runs as the image's user; the stand-ins differ from compose in image,
    # entrypoint and the worker's audit size only.
    assert set(_standins(dict.fromkeys(("medrobust", "postgres", "prometheus"), "image"))["services"]["audit-worker"]) == {"environment"}
    for service in ("frontend", "audit-worker"):
        assert stack.inspect(service)["Config"]["User"] in ("10001:10001", "10001"), service


def _frontend_get(stack: Compose, path: str) -> dict:
    """GET `path` of the front end (port 8000) with the API token, inside its container, as nginx
    would call it on compose's network."""
    code = (
        "import json, urllib.request\n"
        f"request = urllib.request.Request('http://127.0.0.1:8000{path}', headers={{'Authorization': 'Bearer {TOKEN}'}})\n"
        "print(json.dumps(json.load(urllib.request.urlopen(request, timeout=30))))\n"
    )
    return json.loads(podman("exec", stack.container("frontend"), "python", "-c", code).stdout)


def _query(expression: str) -> list[dict]:
    """The instant vector compose's Prometheus (127.0.0.1:9090, as compose publishes it) gives."""
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())["data"]["result"]


def test_prometheus_scrapes_the_front_end_the_worker_and_tf_serving_on_composes_network(stack):
    jobs = {"medrobust-frontend", "medrobust-audit", "tf-serving"}
    wait_until(lambda: stack.healthy("prometheus"), seconds=START_SECONDS, expected="prometheus healthy",
               context=lambda: stack.logs("prometheus"))
    up = wait_until(
        lambda: {sample["metric"]["job"] for sample in _query("up == 1")} >= jobs or None,
        seconds=SCRAPE_SECONDS + START_SECONDS, expected=f"every job of {sorted(jobs)} up",
        context=lambda: json.dumps(_query("up"), indent=1) + stack.logs("frontend", "audit-worker", "tf-serving"),
    )
    assert up
    rules = json.loads(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/rules", timeout=10).read())["data"]["groups"]
    assert rules, "expected compose's Prometheus to load deploy/prometheus/alerts.yml"


def test_a_prediction_goes_through_the_front_end_to_tf_serving_and_is_counted(stack, held_in_png, tiny_repo):
    """Inside compose's network, as nginx would call it: the front end answers from the TF Serving
    stand-in, and TF Serving's request count (its monitoring page, scraped by Prometheus) shows it.
    The attention model: the worker audits only the baseline, whose Predicts it counts too."""
    model = tiny_repo.attention
    wait_until(lambda: stack.healthy("frontend"), seconds=START_SECONDS, expected="frontend healthy",
               context=lambda: stack.logs("frontend"))
    before = _served(stack, model)
    # %-formatting: the script's own dict braces would need doubling in an f-string.
    code = (  # noqa: UP031
        "import json, sys, urllib.request\n"
        "request = urllib.request.Request('http://127.0.0.1:8000/api/v1/models/%s/predict', data=sys.stdin.buffer.read(),"
        " headers={'Content-Type': 'image/png', 'Authorization': 'Bearer %s'}, method='POST')\n"
        "print(json.dumps(json.load(urllib.request.urlopen(request, timeout=120))))\n"
    ) % (model, TOKEN)
    done = subprocess.run(["podman", "exec", "--interactive", stack.container("frontend"), "python", "-c", code],
                          input=held_in_png, capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    answer = json.loads(done.stdout)
    assert answer["model"] == model and answer["label"] in answer["probabilities"], answer
    after = _served(stack, model)
    assert after > before, f"expected the stand-in to answer the prediction's Predicts, counted {before} then {after}"
    wait_until(lambda: _query(f':tensorflow:serving:request_count{{model_name="{model}"}} >= {after}'),
               seconds=SCRAPE_SECONDS, expected=f"Prometheus to scrape {model}'s {after} Predicts from TF Serving's monitoring page")


def _served(stack: Compose, model: str) -> int:
    """The Predicts of `model` that TF Serving's monitoring page counts, read inside its container."""
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8501/monitoring/prometheus/metrics').read().decode())"
    page = podman("exec", stack.container("tf-serving"), "python", "-c", code).stdout
    counts = [float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if f'model_name="{model}"' in line]
    return int(sum(counts))


def test_the_front_end_is_ready_with_every_model_available_in_tf_serving(stack, tiny_repo):
    wait_until(lambda: stack.healthy("frontend"), seconds=START_SECONDS, expected="frontend healthy",
               context=lambda: stack.logs("frontend"))

    def listed() -> dict | None:
        body = _frontend_get(stack, "/readyz")
        return body if body.get("models") else None

    ready = wait_until(listed, seconds=START_SECONDS, expected="/readyz listing the models", context=lambda: stack.logs("frontend"))
    assert ready["backend"] == "tfserving", ready
    assert ready["models"] == dict.fromkeys(tiny_repo.models, "AVAILABLE"), ready


def test_the_worker_audits_through_tf_serving_stores_in_postgres_and_prometheus_has_the_figures(stack, tiny_repo):
    """The worker finds the new model version, audits it through the TF Serving stand-in, stores
    the run in compose's PostgreSQL (which the front end reads back) and exposes the figures that
    compose's Prometheus scrapes."""
    model = tiny_repo.baseline

    def figures() -> dict[str, float]:
        found = {r["metric"]["epsilon"]: float(r["value"][1])
                 for r in _query(f'medrobust_audit_robust_accuracy{{job="medrobust-audit",model="{model}"}}')}
        return found if set(found) == set(EPSILONS) else {}

    scraped = wait_until(figures, seconds=AUDIT_SECONDS + SCRAPE_SECONDS, expected=f"{model}'s robust accuracy at {EPSILONS} in Prometheus",
                         context=lambda: stack.logs("audit-worker", "tf-serving"))
    assert all(0.0 <= value <= 1.0 for value in scraped.values()), scraped
    runs = _frontend_get(stack, f"/api/v1/audits?model={model}")["audits"]
    assert [run["status"] for run in runs] == ["succeeded"], runs
    assert _query(f':tensorflow:serving:request_count{{model_name="{model}"}} > 0'), "expected the stand-in to count the audit's Predicts"
    log = stack.logs("audit-worker", tail=-1)
    assert "Traceback" not in log and " ERROR " not in log, log
