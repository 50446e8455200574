"""The audit draws its reports where the front end reads them: one volume, the same path, in
compose and in Kubernetes (the Audits pages never draw on a request)."""

from __future__ import annotations

import yaml

from tests.project import PROJECT

DEPLOY = PROJECT / "deploy"


def _env(container: dict) -> dict:
    env = container.get("environment") or container.get("env") or {}
    return env if isinstance(env, dict) else {e["name"]: e.get("value") for e in env}


def test_compose_shares_the_artefacts_volume_between_worker_and_front_end():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    worker, frontend = services["audit-worker"], services["frontend"]
    assert _env(worker)["MEDROBUST_AUDIT_ARTEFACTS"] == _env(frontend)["MEDROBUST_AUDIT_ARTEFACTS"] == "/artefacts"
    assert "audit-artefacts:/artefacts" in worker["volumes"]
    assert "audit-artefacts:/artefacts:ro" in frontend["volumes"]


def test_the_audit_workers_write_where_the_front_end_reads():
    jobs = list(yaml.safe_load_all((DEPLOY / "k8s" / "audit-worker-deployment.yaml").read_text()))
    assert jobs
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert _env(container)["MEDROBUST_AUDIT_ARTEFACTS"] == "/artefacts"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/artefacts"]["name"] == "audit-artefacts" and not mounts["/artefacts"].get("readOnly")
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["audit-artefacts"]["persistentVolumeClaim"]["claimName"] == "audit-artefacts"
    (frontend,) = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "frontend-deployment.yaml").read_text())
                   if d["kind"] == "Deployment"]
    pod = frontend["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "frontend"]  # not its nginx sidecar
    assert _env(container)["MEDROBUST_AUDIT_ARTEFACTS"] == "/artefacts"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/artefacts"] == {"name": "audit-artefacts", "mountPath": "/artefacts", "readOnly": True}
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert "audit-artefacts-pvc.yaml" in kustomization["resources"]
