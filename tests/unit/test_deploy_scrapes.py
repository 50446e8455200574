"""Every `medrobust_audit_*` series the dashboards and alerts read is exported by a process Prometheus scrapes.

Each scrape target (a compose job of deploy/prometheus/prometheus.yml, or a Kubernetes workload
annotated `prometheus.io/scrape`) is mapped to the process it runs (`serve` or `audit worker`,
from its command), and each process to the metric families its collectors export, read off the
code: the front end's ServiceMetrics, and the audit's AuditCollector wherever that process has a
store. This is how Kubernetes once had no audit series at all: the CronJobs ran `audit run`, which
nobody scraped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from audit.metrics import metric_families
from service.metrics import ServiceMetrics
from tests import deploy_queries as dq

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _exported_by_the_front_end() -> frozenset[str]:
    """The front end's own families, from a registry its metrics are declared in."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    return frozenset(f.name + ("_total" if f.type == "counter" else "") for f in registry.collect())


def exported(kind: str, *, has_store: bool) -> frozenset[str]:
    """The metric names a process of `kind` exports (histograms by base name)."""
    audit = frozenset(metric_families()) if has_store else frozenset()
    if kind == "frontend":
        return _exported_by_the_front_end() | audit
    if kind == "audit-worker":
        return frozenset(metric_families())  # a worker always has its store
    return frozenset()  # TF Serving: its own :tensorflow: series


def process_kind(command: list[str], image: str = "medrobust") -> str:
    """What a container runs, from its image (compose's may be `${MEDROBUST_IMAGE:-medrobust:latest}`) and arguments."""
    if not image.removeprefix("${MEDROBUST_IMAGE:-").startswith("medrobust"):
        return image.split(":", maxsplit=1)[0].rsplit("/", 1)[-1]
    words = [w for w in command if not w.startswith("-")]
    if words[:1] == ["serve"]:
        return "frontend"
    if words[:2] == ["audit", "worker"]:
        return "audit-worker"
    return " ".join(words[:2]) or "unknown"


def _k8s_documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_scraped() -> dict[str, frozenset[str]]:
    """Per scraped Kubernetes workload, what it exports."""
    config = next(d for d in _k8s_documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "medrobust")["data"]
    found = {}
    for doc in _k8s_documents():
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        template = doc["spec"]["template"]
        if template["metadata"].get("annotations", {}).get("prometheus.io/scrape") != "true":
            continue
        port = template["metadata"]["annotations"]["prometheus.io/port"]
        for container in template["spec"]["containers"]:
            if port not in {str(p["containerPort"]) for p in container.get("ports", [])}:
                continue
            env = {e["name"] for e in container.get("env", [])} | set(config)
            kind = process_kind(container.get("args", []), container["image"])
            found[doc["metadata"]["name"]] = exported(kind, has_store="MEDROBUST_DATABASE_URL" in env)
    return found


def compose_scraped() -> dict[str, frozenset[str]]:
    """Per job of deploy/prometheus/prometheus.yml, what the compose service it scrapes exports."""
    services = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    config = yaml.safe_load(dq.PROMETHEUS_CONFIG.read_text())
    found = {}
    for job in config["scrape_configs"]:
        exports: frozenset[str] = frozenset()
        for target in (t for group in job["static_configs"] for t in group["targets"]):
            service = services[target.split(":")[0]]
            kind = process_kind(service.get("command", []), service.get("image", "medrobust"))
            exports |= exported(kind, has_store="MEDROBUST_DATABASE_URL" in service.get("environment", {}))
        for rule in job.get("metric_relabel_configs", []):  # series Prometheus drops at scrape time
            if rule.get("action") == "drop" and rule.get("source_labels") == ["__name__"]:
                exports = frozenset(m for m in exports if not re.fullmatch(rule["regex"], m))
        found[job["job_name"]] = exports
    return found


def audit_metrics_read() -> dict[str, frozenset[str]]:
    """Every `medrobust_audit_*` name a dashboard panel, dashboard variable or alert reads, by where."""
    read = {f"{q.dashboard}: {q.panel}": q.metrics for q in dq.dashboard_queries()}
    read |= {f"{d}: ${v}": dq.metric_names(selector) for d, v, selector in dq.variable_queries()}
    read |= {f"alert {a.name}": dq.metric_names(a.expr) for a in dq.alert_expressions()}
    return {where: frozenset(m for m in names if m.startswith("medrobust_audit_")) for where, names in read.items()}


@pytest.mark.parametrize("stack, scraped", [("kubernetes", k8s_scraped), ("compose", compose_scraped)])
def test_every_audit_series_read_is_exported_by_a_scraped_process(stack, scraped):
    targets = scraped()
    available = frozenset().union(*targets.values())
    missing = {where: sorted(names - available) for where, names in audit_metrics_read().items() if names - available}
    assert not missing, f"{stack}: read but exported by no scraped process ({sorted(targets)}): {missing}"
    assert any(names for names in audit_metrics_read().values())  # the check above had something to check


def test_on_kubernetes_the_workers_and_the_front_end_both_export_the_audit():
    targets = k8s_scraped()
    audit = frozenset(metric_families())
    assert audit <= targets["audit-worker"] and audit <= targets["frontend"]


def test_the_deploy_queries_know_the_collectors_names_and_labels():
    for name, labels in metric_families().items():
        assert dq.METRIC_LABELS.get(name) == frozenset(labels), name


def test_a_cronjob_audit_would_be_caught():
    """The check can fail: an `audit run` (as the old CronJobs) exports nothing anyone scrapes."""
    assert process_kind(["audit", "run", "--json"]) == "audit run"
    assert exported("audit run", has_store=True) == frozenset()
    assert exported("frontend", has_store=False).isdisjoint(metric_families())


def test_compose_takes_the_audit_series_from_the_worker_only():
    """Two exporters of one figure would make every audit alert fire twice."""
    targets = compose_scraped()
    assert frozenset(metric_families()) <= targets["medrobust-audit"]
    assert targets["medrobust-frontend"].isdisjoint(metric_families())
    assert targets["medrobust-frontend"]  # its own series are kept
