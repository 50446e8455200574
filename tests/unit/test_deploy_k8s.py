"""deploy/k8s: every manifest validates against the Kubernetes schemas; the Kustomize base is whole."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from training.contract.config import ServiceConfig, default_of

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
TASKS = ("derm", "dr", "pneumothorax")


@functools.cache
def _documents() -> tuple[tuple[str, dict], ...]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(docs)


def _by_kind(kind: str) -> dict[str, dict]:
    """Manifests of one kind by name (shared, parsed once: tests must not modify them)."""
    return {doc["metadata"]["name"]: doc for _, doc in _documents() if doc["kind"] == kind}


def _pod_specs() -> list[tuple[str, dict]]:
    specs = [(name, d["spec"]["template"]) for name, d in _by_kind("Deployment").items()]
    specs += [(name, c["spec"]["jobTemplate"]["spec"]["template"]) for name, c in _by_kind("CronJob").items()]
    return specs


@pytest.mark.parametrize("name, doc", _documents(), ids=lambda v: v if isinstance(v, str) else v["metadata"]["name"])
def test_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict) -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    """Guards the test above: strict validation must catch what kubectl would reject."""
    deployment = dict(_by_kind("Deployment")["frontend"])
    deployment["spec"] = dict(deployment["spec"], replica=2)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk and len(listed) == len(set(listed))
    assert [i["name"] for i in kustomization["images"]] == ["medrobust"]


def test_the_base_has_the_pieces_the_issue_lists() -> None:
    assert {"tf-serving", "frontend"} <= set(_by_kind("Deployment"))
    assert {"tf-serving", "frontend"} <= set(_by_kind("Service"))
    hpa = _by_kind("HorizontalPodAutoscaler")["tf-serving"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tf-serving"}
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1
    pvc = _by_kind("PersistentVolumeClaim")["model-repo"]
    # Every TF Serving replica mounts it, possibly on different nodes.
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_audit_workers_are_identical_replicas_with_every_tasks_audit_set() -> None:
    """No CronJob lists models by hand: workers audit every served model on its task's audit set."""
    from audit.audit_sets import load_audit_sets

    assert not _by_kind("CronJob")
    worker = _by_kind("Deployment")["audit-worker"]
    assert worker["spec"]["replicas"] == 2
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["audit", "worker"] and container["image"] == "medrobust"
    assert "--models" not in args and "--dataset" not in " ".join(args)
    config = _by_kind("ConfigMap")["medrobust"]["data"]
    assert "--tf-serving=$(MEDROBUST_TF_SERVING)" in args and config["MEDROBUST_TF_SERVING"] == "dns:///tf-serving:8500"
    # The audit-sets file the variable names is the ConfigMap's, mounted where it says, and names each task.
    path = Path(config["MEDROBUST_AUDIT_SETS"])
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert volumes[mount["name"]]["configMap"]["name"] == "audit-sets"
    text = _by_kind("ConfigMap")["audit-sets"]["data"][path.name]
    scratch = Path(__import__("tempfile").mkdtemp()) / path.name
    scratch.write_text(text)
    assert set(load_audit_sets(scratch).tasks) == set(TASKS)
    # The model cards (their tasks) come from the repository TF Serving serves.
    assert {m["mountPath"]: m.get("readOnly") for m in container["volumeMounts"]}["/models"] is True


def test_the_audit_workers_scale_on_the_queue_depth() -> None:
    hpa = _by_kind("HorizontalPodAutoscaler")["audit-worker"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "audit-worker"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] == "medrobust_audit_jobs_queued"
    assert hpa["spec"]["minReplicas"] == _by_kind("Deployment")["audit-worker"]["spec"]["replicas"]
    assert "metrics adapter" in (K8S / "audit-worker-hpa.yaml").read_text()


def test_pods_have_resources_probes_and_run_as_non_root() -> None:
    for name, template in _pod_specs():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"]), name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}, name
            assert security.get("runAsUser", spec["securityContext"].get("runAsUser")) != 0, name
            if name in _by_kind("Deployment"):
                assert container.get("readinessProbe") and container.get("livenessProbe"), name


def test_services_are_scraped_through_annotations_on_their_metrics_ports() -> None:
    expected = {
        "tf-serving": ("8501", "/monitoring/prometheus/metrics"), "frontend": ("9102", "/metrics"),
        "audit-worker": ("9101", "/metrics"),
    }
    for name, deployment in _by_kind("Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == expected[name]
        ports = {str(p["containerPort"]) for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert annotations["prometheus.io/port"] in ports, name


def test_the_front_ends_metrics_port_is_scraped_but_not_exposed_by_its_service() -> None:
    (frontend,) = (c for c in _by_kind("Deployment")["frontend"]["spec"]["template"]["spec"]["containers"] if c["name"] == "frontend")
    assert "--metrics-port=9102" in frontend["args"]
    assert {"name": "metrics", "containerPort": 9102} in frontend["ports"]
    exposed = {str(p.get("targetPort")) for p in _by_kind("Service")["frontend"]["spec"]["ports"]}
    assert not exposed & {"9102", "metrics"}


def test_services_select_their_pods() -> None:
    deployments = _by_kind("Deployment")
    for name, service in _by_kind("Service").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        container_ports = {p["name"] for c in deployments[name]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports, name


def test_tf_serving_matches_the_compose_stack_and_its_configmap_the_files() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    (container,) = _by_kind("Deployment")["tf-serving"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == compose["services"]["tf-serving"]["command"]
    assert container["image"].split(":")[0] == "tensorflow/serving"
    config = _by_kind("ConfigMap")["tf-serving-config"]["data"]
    for name, text in config.items():
        assert text == (ROOT / "deploy" / "tf-serving" / name).read_text(), f"{name} differs from deploy/tf-serving/"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/tf-serving"] == "config" and mounts["/models"] == "model-repo"


def _containers(deployment: str) -> dict[str, dict]:
    return {c["name"]: c for c in _by_kind("Deployment")[deployment]["spec"]["template"]["spec"]["containers"]}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_front_ends_service_leads_through_its_nginx_sidecar_to_gunicorn_over_loopback() -> None:
    containers = _containers("frontend")
    assert set(containers) == {"frontend", "nginx"}
    gunicorn, nginx = containers["frontend"], containers["nginx"]
    ports = {p["name"]: (name, p["containerPort"]) for name, c in containers.items() for p in c["ports"]}
    (service_port,) = _by_kind("Service")["frontend"]["spec"]["ports"]
    assert ports[service_port["targetPort"]][0] == "nginx", "the Service must lead to nginx, not to gunicorn's threads"
    env = {name: e["value"] for name, e in _env(nginx).items() if "value" in e}
    assert env["MEDROBUST_PROXY_LISTEN"] == str(ports[service_port["targetPort"]][1])
    gunicorn_port = next(a.split("=", 1)[1] for a in gunicorn["args"] if a.startswith("--port="))
    assert env["MEDROBUST_PROXY_UPSTREAM"] == f"127.0.0.1:{gunicorn_port}"
    # The same image as the compose stack's default.
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert nginx["image"] == re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", compose["services"]["nginx"]["image"])


def test_the_nginx_sidecar_runs_the_projects_template_with_every_variable_set() -> None:
    template = (ROOT / "deploy" / "nginx" / "medrobust.conf.template").read_text()
    config = _by_kind("ConfigMap")["frontend-nginx"]["data"]
    assert config == {"medrobust.conf.template": template}, "differs from deploy/nginx/medrobust.conf.template"
    spec = _by_kind("Deployment")["frontend"]["spec"]["template"]["spec"]
    nginx = _containers("frontend")["nginx"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in nginx["volumeMounts"]}
    assert mounts["/etc/nginx/templates/medrobust.conf.template"]["configMap"]["name"] == "frontend-nginx"
    env = _env(nginx)
    assert env["NGINX_ENVSUBST_FILTER"]["value"] == "MEDROBUST_"
    used = set(re.findall(r"\$\{(MEDROBUST_\w+)\}", template))
    assert used == {name for name in env if name.startswith("MEDROBUST_")}
    # Read-only root: the rendered configuration, the temp paths and the pid file are emptyDirs,
    # buffered uploads (patient data) in memory.
    for path in ("/etc/nginx/conf.d", "/var/cache/nginx", "/run"):
        assert mounts[path]["emptyDir"]["medium"] == "Memory", path
    assert nginx["securityContext"]["runAsUser"] == 101


def test_the_front_end_and_its_nginx_read_one_upload_limit() -> None:
    data = _by_kind("ConfigMap")["medrobust"]["data"]
    assert data["MEDROBUST_MAX_UPLOAD_BYTES"] == str(default_of(ServiceConfig, "max_upload_bytes"))
    containers = _containers("frontend")
    assert {"configMapRef": {"name": "medrobust"}} in containers["frontend"]["envFrom"]
    reference = _env(containers["nginx"])["MEDROBUST_MAX_UPLOAD_BYTES"]["valueFrom"]["configMapKeyRef"]
    assert reference == {"name": "medrobust", "key": "MEDROBUST_MAX_UPLOAD_BYTES"}
