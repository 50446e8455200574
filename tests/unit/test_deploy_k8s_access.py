"""deploy/k8s fails closed: the front end needs its API token, and only the front end and the audit reach TF Serving."""

from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _pod_templates() -> dict[str, dict]:
    """Every workload's pod template by workload name."""
    templates = {}
    for doc in _documents():
        if doc["kind"] == "Deployment":
            templates[doc["metadata"]["name"]] = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            templates[doc["metadata"]["name"]] = doc["spec"]["jobTemplate"]["spec"]["template"]
    return templates


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is checked here, got {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _policies_of(pod_labels: dict) -> list[dict]:
    return [d for d in _documents() if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], pod_labels)]


def test_only_the_front_end_and_the_audit_workers_reach_tf_servings_ports():
    templates = _pod_templates()
    tf_serving = templates["tf-serving"]
    policies = _policies_of(tf_serving["metadata"]["labels"])
    assert policies, "no NetworkPolicy selects TF Serving's pods"
    tf_ports = {p["name"] for c in tf_serving["spec"]["containers"] for p in c["ports"]}
    tf_numbers = {p["containerPort"] for c in tf_serving["spec"]["containers"] for p in c["ports"]}
    admitted: set[str] = set()
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            assert peers, f"{policy['metadata']['name']}: a rule without `from` admits every pod"
            for peer in peers:
                # Pods of this namespace only: no namespaceSelector, no ipBlock.
                assert set(peer) == {"podSelector"}, peer
                admitted |= {name for name, t in templates.items() if _selects(peer["podSelector"], t["metadata"]["labels"])}
            ports = rule.get("ports")
            assert ports, "a rule without `ports` opens every port"
            for port in ports:
                assert port.get("protocol", "TCP") == "TCP"
                assert port["port"] in tf_ports | tf_numbers, port
    assert admitted == {"frontend", "audit-worker"}


def test_the_policy_covers_both_of_tf_servings_ports():
    (policy,) = _policies_of(_pod_templates()["tf-serving"]["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == {"grpc", "http"}


def test_the_front_end_does_not_start_without_its_api_token():
    (container,) = [c for c in _pod_templates()["frontend"]["spec"]["containers"] if c["name"] == "frontend"]
    env = {e["name"]: e for e in container["env"]}
    reference = env["MEDROBUST_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == "medrobust-tokens" and reference["key"] == "api"
    assert reference.get("optional", False) is False
    assert "--host=0.0.0.0" in container["args"]
    assert "MEDROBUST_ALLOW_ANONYMOUS" not in env
    config = next(d for d in _documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "medrobust")
    assert "MEDROBUST_ALLOW_ANONYMOUS" not in config["data"]
