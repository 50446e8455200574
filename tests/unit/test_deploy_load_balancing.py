"""deploy/: the front end and the audit reach every TF Serving replica (a headless Service named by a
`dns:///` target, balanced round robin by the client), and TF Serving closes old connections so that
clients resolve the name again and find replicas the HPA adds."""

from __future__ import annotations

from pathlib import Path

import yaml

from training.contract.config import DNS_SCHEME, check_tf_serving_target

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# A client keeps a connection, and the addresses it resolved, until TF Serving closes it: the age
# bounds how long a new replica waits for calls (plus gRPC's 30 s between two resolutions).
MAX_CONNECTION_AGE_MS = 60_000


def _k8s(kind: str) -> dict[str, dict]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").partition("=")[::2] for arg in args if arg.startswith("--"))


def _medrobust_containers() -> list[tuple[str, dict]]:
    """Every container of the medrobust image in the Kubernetes base, by its workload's name."""
    templates = [(n, d["spec"]["template"]) for n, d in _k8s("Deployment").items()]
    templates += [(n, c["spec"]["jobTemplate"]["spec"]["template"]) for n, c in _k8s("CronJob").items()]
    return [(n, c) for n, t in templates for c in t["spec"]["containers"] if c["image"] == "medrobust"]


def test_tf_serving_is_a_headless_service_named_by_the_clients_dns_target():
    service = _k8s("Service")["tf-serving"]
    # No cluster IP: DNS lists every ready pod instead of one virtual address.
    assert service["spec"]["clusterIP"] == "None"
    target = _k8s("ConfigMap")["medrobust"]["data"]["MEDROBUST_TF_SERVING"]
    check_tf_serving_target(target)
    assert target.startswith(DNS_SCHEME)
    host, _, port = target.removeprefix(DNS_SCHEME).rpartition(":")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert (host, int(port)) == ("tf-serving", ports["grpc"])


def test_every_kubernetes_client_reads_the_dns_target_from_the_configmap():
    clients = _medrobust_containers()
    assert {name for name, _ in clients} >= {"frontend", "audit-worker"}
    for name, container in clients:
        assert _flags(container["args"])["tf-serving"] == "$(MEDROBUST_TF_SERVING)", name
        assert {"configMapRef": {"name": "medrobust"}} in container["envFrom"], name
        assert "MEDROBUST_TF_SERVING" not in {e["name"] for e in container.get("env", [])}, f"{name} overrides the target"


def test_compose_clients_use_the_same_kind_of_target():
    services = _compose()
    port = _flags(services["tf-serving"]["command"])["port"]
    expected = f"{DNS_SCHEME}tf-serving:{port}"
    check_tf_serving_target(expected)
    assert _flags(services["frontend"]["command"])["tf-serving"] == expected
    for name in ("frontend", "audit-worker"):
        assert services[name]["environment"]["MEDROBUST_TF_SERVING"] == expected, name


def test_tf_serving_closes_old_connections_so_clients_resolve_new_replicas():
    (container,) = _k8s("Deployment")["tf-serving"]["spec"]["template"]["spec"]["containers"]
    for args in (container["args"], _compose()["tf-serving"]["command"]):
        # TF Serving's --grpc_channel_arguments: comma-separated NAME=VALUE for its gRPC server.
        arguments = dict(a.partition("=")[::2] for a in _flags(args)["grpc_channel_arguments"].split(","))
        assert 0 < int(arguments["grpc.max_connection_age_ms"]) <= MAX_CONNECTION_AGE_MS
        # No grace limit: a call in flight on an old connection (an audit's vjp batch) finishes.
        assert "grpc.max_connection_age_grace_ms" not in arguments
