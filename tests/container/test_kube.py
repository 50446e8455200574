"""deploy/k8s's front-end Deployment, as the Kustomize base renders it, run by `podman play kube`
with the project's image: the pod keeps the manifest's non-root user, read-only root, dropped
capabilities and probes.

The static checks (tests/unit/test_deploy_k8s*.py) validate every manifest against Kubernetes'
schemas; this builds the pod the front end's manifest describes. What podman 4.3 leaves to a
kubelet, the renderer here does as the kubelet would, and nothing more:
- `$(VAR)` references in `args` are expanded from the container's environment (podman passes them
  through literally);
- probes' named ports become the container's port numbers (podman turns a name into port 0).
The nginx sidecar is left out: its official image cannot be pulled here (tests/integration runs the
project's nginx configuration with Debian's nginx). Podman turns the liveness probe into the
container's healthcheck, a `curl` the image does not carry (a kubelet makes the GET itself), so the
test makes that GET from inside the pod; podman 4.3 has no readiness or startup probes.
"""

from __future__ import annotations

import base64
import copy
import json
import re

import pytest
import yaml

from tests.container.containers import TOKEN, import_model_repo, wait_until
from tests.container.images import podman
from tests.project import PROJECT

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

K8S = PROJECT / "deploy" / "k8s"
CONFIGMAP = K8S / "medrobust-configmap.yaml"
START_SECONDS = 240
# The Secrets the Deployment reads; podman 4.3 looks a secretKeyRef up in a podman secret holding
# the Secret's `data` as JSON (key: base64 of the value).
# No audit store: this pod checks the front end's own probes. A store no worker has migrated makes
# `serve` refuse to start (the front end never migrates; the workers do), which needs a worker beside it.
SECRETS = {"medrobust-tokens": {"api": TOKEN}, "medrobust-database": {"url": ""}}


def rendered_frontend(image: str) -> dict:
    """The front end's Deployment as `kustomize build deploy/k8s` gives it (the base's common labels;
    its `images` entry pointed at `image`, as `kustomize edit set image` would), then the kubelet's
    share that podman 4.3 lacks (the module's docstring), without the nginx sidecar, one replica."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    deployment = copy.deepcopy(yaml.safe_load((K8S / "frontend-deployment.yaml").read_text()))
    for entry in kustomization.get("labels", []):
        deployment["metadata"].setdefault("labels", {}).update(entry["pairs"])
    config = yaml.safe_load(CONFIGMAP.read_text())["data"]
    # One pod: podman makes one per replica, and the second would want the first's ports.
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    pod["containers"] = [c for c in pod["containers"] if c["name"] == "frontend"]
    (container,) = pod["containers"]
    assert [i["name"] for i in kustomization["images"]] == [container["image"]]
    container["image"] = image
    env = dict(config) | {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    container["args"] = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["args"]]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        action = container[probe].get("httpGet") or container[probe].get("tcpSocket")
        action["port"] = ports.get(action["port"], action["port"])
    mounted = {m["name"] for m in container["volumeMounts"]}
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] in mounted]
    return deployment


@pytest.fixture(scope="module")
def pod(medrobust_image, tiny_repo, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("kube")
    deployment = rendered_frontend(medrobust_image.tag)
    manifest = scratch / "frontend.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    claims = [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    try:
        for name, data in SECRETS.items():
            secret = scratch / f"{name}.json"
            secret.write_text(json.dumps({key: base64.b64encode(value.encode()).decode() for key, value in data.items()}))
            podman("secret", "create", name, str(secret))
        import_model_repo("model-repo", tiny_repo.path, scratch)
        # The ConfigMaps its variables and its audit-sets volume come from.
        podman("play", "kube", "--configmap", str(CONFIGMAP), "--configmap", str(K8S / "audit-sets-configmap.yaml"),
               str(manifest), timeout=300)
        container = json.loads(podman("ps", "--all", "--filter", f"pod={deployment['metadata']['name']}-pod-0",
                                      "--format", "json").stdout)
        (name,) = [c["Names"][0] for c in container if not c["IsInfra"]]
        yield name, deployment
    finally:
        podman("play", "kube", "--down", str(manifest), check=False, timeout=120)
        podman("secret", "rm", *SECRETS, check=False)
        podman("volume", "rm", "--force", *claims, check=False)


def _inside(name: str, code: str) -> str:
    return podman("exec", name, "python", "-c", code).stdout


def _get(name: str, path: str, port: int = 8000) -> str:
    """The status the front end answers a GET of `path` on `port` with, asked inside the pod."""
    return _inside(name, (
        "import urllib.error, urllib.request\n"
        "try:\n"
        f"    print(urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
        "except OSError as exc:\n"
        "    print('no answer', exc)\n"
    )).strip()


def test_the_pod_runs_as_the_manifests_non_root_user_on_a_read_only_root(pod):
    name, deployment = pod
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    inspected = json.loads(podman("inspect", name).stdout)[0]
    assert inspected["Config"]["User"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    assert _inside(name, "import os; print(os.getuid(), os.getgid())").split() == ["10001", "10001"]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert "no-new-privileges" in inspected["HostConfig"]["SecurityOpt"]
    status = _inside(name, "print(open('/proc/1/status').read())")
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    assert int(effective, 16) == 0, f"expected no effective capabilities, got CapEff {effective}"
    written = podman("exec", name, "python", "-c", "open('/home/medrobust/probe', 'w')", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr, written
    # the emptyDir volumes are where the front end writes
    assert _inside(name, "import os; print(os.access('/tmp/medrobust-metrics', os.W_OK))").strip() == "True"


def test_the_liveness_probe_is_the_containers_healthcheck_and_answers(pod):
    name, deployment = pod
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    liveness = container["livenessProbe"]
    healthcheck = json.loads(podman("inspect", "--format", "{{json .Config.Healthcheck}}", name).stdout)
    assert f"http://localhost:{liveness['httpGet']['port']}{liveness['httpGet']['path']}" in " ".join(healthcheck["Test"])
    assert healthcheck["Interval"] == liveness["periodSeconds"] * 10**9
    # The kubelet's GETs: alive (the liveness and startup probes' /healthz), and not ready while no
    # TF Serving answers at the ConfigMap's address (the readiness probe's /readyz keeps the pod out
    # of the Service until it does).
    wait_until(lambda: _get(name, liveness["httpGet"]["path"], liveness["httpGet"]["port"]) == "200", seconds=START_SECONDS,
               expected="/healthz answering 200", context=lambda: podman("logs", name, check=False).stderr[-3000:])
    # A worker's first /readyz builds its backend client, which on a loaded CI machine took longer than
    # the 5 s this GET waits; the kubelet retries a probe that timed out in the same way. Any answer
    # that comes must be 503.
    readyz = container["readinessProbe"]["httpGet"]["path"]
    answer = wait_until(lambda: None if (status := _get(name, readyz)).startswith("no answer") else status,
                        seconds=60, expected=f"an answer to {readyz}",
                        context=lambda: podman("logs", name, check=False).stderr[-3000:])
    assert answer == "503"
    logs = podman("logs", name, check=False)
    assert "traceback" not in (logs.stdout + logs.stderr).lower()
