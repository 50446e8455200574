"""deploy/compose.yaml fails closed: no open API, no default Grafana password, every container locked down.

Variables are substituted the way Compose does (`${X:-default}`, `${X:?message}`), and the front
end's command and environment go through the real `medrobust serve` parser and `read_config`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from medrobust.cli import build_parser
from training.contract.config import ConfigError, ServiceConfig, default_of, read_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class Unset(KeyError):
    """A required variable (`${X:?message}`) is not set: Compose refuses the whole file."""


def substitute(value, environ: Mapping[str, str]):
    """Compose's interpolation of one value (strings inside lists and mappings too)."""
    if isinstance(value, dict):
        return {k: substitute(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        given = environ.get(name)
        missing = given is None or (given == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and missing:
            raise Unset(f"{name}: {arg}")
        if op in (":-", "-") and missing:
            return arg
        return given or ""

    return VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _frontend_config(services: dict, environ: Mapping[str, str]) -> ServiceConfig:
    frontend = substitute(services["frontend"], environ)
    args = build_parser().parse_args(frontend["command"])
    variables = {k: str(v) for k, v in frontend["environment"].items()}
    return read_config(ServiceConfig, vars(args), variables)


def test_the_stack_does_not_start_without_an_api_token(services):
    # The helper reads the forms compose.yaml uses as Compose does.
    assert substitute("${A:-x}", {}) == "x" and substitute("${A:-x}", {"A": ""}) == "x" and substitute("${A:-x}", {"A": "y"}) == "y"
    assert substitute("a$${B}", {}) == "a${B}" and substitute("${A:?say so}", {"A": "t"}) == "t"
    for environ in ({"MEDROBUST_DB_PASSWORD": "pw"}, {"MEDROBUST_API_TOKEN": "", "MEDROBUST_DB_PASSWORD": "pw"}):
        with pytest.raises(Unset, match="MEDROBUST_API_TOKEN: set MEDROBUST_API_TOKEN"):
            substitute(services["frontend"]["environment"], environ)


def test_with_a_token_the_front_ends_command_and_environment_read_as_a_closed_api(services):
    config = _frontend_config(services, {"MEDROBUST_API_TOKEN": "t0ken", "MEDROBUST_DB_PASSWORD": "pw"})
    assert (config.host, config.api_token, config.allow_anonymous) == ("0.0.0.0", "t0ken", False)


def test_the_front_end_does_not_allow_anonymous_access(services):
    """Were the token's variable optional again, the front end's own rule would refuse to start."""
    frontend = services["frontend"]
    assert "MEDROBUST_ALLOW_ANONYMOUS" not in frontend["environment"]
    assert "--allow-anonymous" not in frontend["command"]
    optional = {**services, "frontend": {**frontend, "environment": {**frontend["environment"], "MEDROBUST_API_TOKEN": "${MEDROBUST_API_TOKEN:-}"}}}
    with pytest.raises(ConfigError, match=r"^--host: .*set MEDROBUST_API_TOKEN"):
        _frontend_config(optional, {"MEDROBUST_DB_PASSWORD": "pw"})


@pytest.mark.parametrize("environ", [{}, {"GRAFANA_ADMIN_PASSWORD": ""}], ids=["unset", "empty"])
def test_grafana_has_no_default_admin_password(services, environ):
    grafana = services["grafana"]["environment"]
    with pytest.raises(Unset, match="GRAFANA_ADMIN_PASSWORD: set GRAFANA_ADMIN_PASSWORD"):
        substitute(grafana["GF_SECURITY_ADMIN_PASSWORD"], environ)
    assert substitute(grafana, {"GRAFANA_ADMIN_PASSWORD": "s3cret"})["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


@pytest.mark.parametrize("environ", [{}, {"MEDROBUST_DB_PASSWORD": ""}], ids=["unset", "empty"])
def test_the_audit_store_has_no_default_password(services, environ):
    for value in (services["postgres"]["environment"]["POSTGRES_PASSWORD"], services["frontend"]["environment"]["MEDROBUST_DATABASE_URL"]):
        with pytest.raises(Unset, match="MEDROBUST_DB_PASSWORD: set MEDROBUST_DB_PASSWORD"):
            substitute(value, environ)
    url = substitute(services["audit-worker"]["environment"]["MEDROBUST_DATABASE_URL"], {"MEDROBUST_DB_PASSWORD": "s3cret"})
    assert url == "postgresql+psycopg2://medrobust:s3cret@postgres:5432/medrobust"


def test_every_service_is_read_only_without_capabilities_or_new_privileges(services):
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    # Only the one-shot that hands the model volume over keeps a capability, and no more than it needs.
    assert {n: s["cap_add"] for n, s in services.items() if "cap_add" in s} == {"model-repo-init": ["CHOWN", "DAC_OVERRIDE"]}


def _writable(service: dict) -> set[str]:
    """Paths a read-only container can still write: its tmpfs mounts and its read-write volumes."""
    paths = {entry.split(":")[0] for entry in service.get("tmpfs", [])}
    for volume in service.get("volumes", []):
        _, target, *mode = volume.split(":")
        if mode != ["ro"]:
            paths.add(target)
    return paths


def _under(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def test_what_each_service_writes_is_a_volume_or_a_tmpfs(services):
    writes = {
        # gunicorn's metric files; matplotlib's config and cache under the home folder
        "frontend": [services["frontend"]["environment"]["PROMETHEUS_MULTIPROC_DIR"], "/tmp", "/home/medrobust/.config",
                     "/home/medrobust/.cache"],
        # example images and reports (.medrobust/audits under the home folder)
        "audit-worker": ["/tmp", "/home/medrobust/.medrobust/audits"],
        # checkpoints (.medrobust), downloads under ~, the trained versions
        "train": ["/tmp", "/home/medrobust/.medrobust", "/home/medrobust/.cache", "/models"],
        "model-repo-init": ["/models"],
        "postgres": ["/var/lib/postgresql/data", "/var/run/postgresql"],
        "prometheus": [next(a.split("=", 1)[1] for a in services["prometheus"]["command"] if a.startswith("--storage.tsdb.path="))],
        "grafana": ["/var/lib/grafana", "/tmp"],
        "tf-serving": ["/tmp"],
        # the rendered configuration, buffered bodies and responses (temp paths), the pid file
        "nginx": ["/etc/nginx/conf.d", "/var/cache/nginx/client_temp", "/var/cache/nginx/proxy_temp", "/run/nginx.pid"],
    }
    assert set(writes) == set(services)
    for name, paths in writes.items():
        writable = _writable(services[name])
        for path in paths:
            assert _under(path, writable), f"{name} writes {path}, which is neither a volume nor a tmpfs"
    # Every tmpfs keeps the engines' default mode 1777, so each service's unprivileged user (10001,
    # nginx's 101, postgres) writes it: no mode option narrows it, and no uid=/gid= option, which
    # podman 4 refuses (tests/container/test_compose.py runs this file under podman).
    assert services["nginx"]["user"] == "101:101"
    for name, service in services.items():
        for entry in service.get("tmpfs", []):
            assert ":" not in entry, f"{name}'s tmpfs {entry!r}: expected a bare path (mode 1777, no uid=)"


@pytest.mark.parametrize("environ, expected", [
    ({}, default_of(ServiceConfig, "max_upload_bytes")),
    ({"MEDROBUST_MAX_UPLOAD_BYTES": "5000000"}, 5_000_000),
], ids=["default", "set"])
def test_the_front_end_and_nginx_read_one_upload_limit(services, environ, expected):
    """nginx refuses what the front end would refuse, and passes everything the front end accepts."""
    environ = {"MEDROBUST_API_TOKEN": "t0ken", "MEDROBUST_DB_PASSWORD": "pw", **environ}
    assert _frontend_config(services, environ).max_upload_bytes == expected
    nginx = substitute(services["nginx"]["environment"], environ)
    assert nginx["MEDROBUST_MAX_UPLOAD_BYTES"] == str(expected)


def test_the_audit_workers_metrics_are_on_loopback_unless_a_deployment_opens_them():
    import yaml

    from tests.project import PROJECT
    from training.contract.config import AuditConfig, read_config

    assert read_config(AuditConfig, {}, {}).metrics_host == "127.0.0.1"
    compose = yaml.safe_load((PROJECT / "deploy" / "compose.yaml").read_text())
    assert compose["services"]["audit-worker"]["environment"]["MEDROBUST_AUDIT_METRICS_HOST"] == "0.0.0.0"
    deployment = yaml.safe_load((PROJECT / "deploy" / "k8s" / "audit-worker-deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "MEDROBUST_AUDIT_METRICS_HOST", "value": "0.0.0.0"} in container["env"]
