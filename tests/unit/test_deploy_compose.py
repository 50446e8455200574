"""deploy/compose.yaml against the Compose Specification, and the TF Serving configs against the real protos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests.tf_serving_protos import message_class

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HERE = Path(__file__).resolve().parent
# The official schema, vendored because tests run offline: see schemas/README.md for its source.
COMPOSE_SCHEMA = HERE / "schemas" / "compose-spec.json"

OFFICIAL_IMAGES = {
    "tf-serving": "tensorflow/serving",
    "postgres": "postgres",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
    "nginx": "nginx",
}
MEDROBUST_SERVICES = {"model-repo-init", "frontend", "audit-worker", "train"}
MODEL_NAME = re.compile(r"(derm|dr|pneumothorax)-(resnet50|inception_resnet_v2)-(attention|baseline)")
NGINX_TEMPLATE = DEPLOY / "nginx" / "medrobust.conf.template"
# What the nginx image's entrypoint substitutes with NGINX_ENVSUBST_FILTER=MEDROBUST_ (braced or not).
TEMPLATE_VARIABLE = re.compile(r"\$\{?(MEDROBUST_\w+)")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").partition("=")[::2] for arg in command if arg.startswith("--"))


def test_compose_file_validates_against_the_compose_specification(compose: dict) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_catches_a_broken_service(compose: dict) -> None:
    """Guards the test above: the vendored schema must reject what Compose rejects."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["frontend"]["depends_on"]["tf-serving"]["condition"] = "service_ready"
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_the_stack_has_every_service(services: dict) -> None:
    assert set(services) == set(OFFICIAL_IMAGES) | MEDROBUST_SERVICES


@pytest.mark.parametrize("service", sorted(OFFICIAL_IMAGES))
def test_third_party_services_use_the_official_images_with_a_pinned_tag(services: dict, service: str) -> None:
    image = services[service]["image"]
    repository, _, tag = image.partition(":")
    assert repository == OFFICIAL_IMAGES[service]
    assert tag and "latest" not in tag, f"{service}: pin a version, got {image!r}"


def test_medrobust_services_build_this_repository(services: dict) -> None:
    for name in MEDROBUST_SERVICES:
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", name


def test_depends_on_names_existing_services_with_conditions(services: dict) -> None:
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                check = services[dependency].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{dependency} must be one-shot"


def test_long_running_services_have_healthchecks(services: dict) -> None:
    for name, service in services.items():
        if service.get("restart") == "unless-stopped":
            assert service["healthcheck"]["test"], name


def test_train_is_a_one_shot_profile_that_writes_the_repository(services: dict) -> None:
    train = services["train"]
    assert train["profiles"] == ["train"] and train["restart"] == "no"
    assert train["command"][0] == "train" and "--all-variants" in train["command"]
    assert "model-repo:/models" in train["volumes"]
    # Everything else only reads the repository; no other service carries a profile.
    for name in ("tf-serving", "frontend", "audit-worker"):
        assert "model-repo:/models:ro" in services[name]["volumes"], name
    assert [n for n, s in services.items() if "profiles" in s] == ["train"]


def test_front_end_and_audit_reach_tf_serving_over_grpc(services: dict) -> None:
    tf_flags = _flags(services["tf-serving"]["command"])
    grpc = f"dns:///tf-serving:{tf_flags['port']}"  # every replica's address, balanced round robin
    frontend = services["frontend"]
    assert frontend["command"][0] == "serve" and _flags(frontend["command"])["tf-serving"] == grpc
    assert frontend["environment"]["MEDROBUST_TF_SERVING"] == grpc
    audit = services["audit-worker"]
    assert audit["command"] == ["audit", "worker"]
    assert audit["environment"]["MEDROBUST_TF_SERVING"] == grpc
    # TF Serving cannot list its models: the worker finds them in the repository it mounts, the
    # same volume TF Serving serves, and audits them all unless told otherwise.
    assert audit["environment"]["MEDROBUST_MODEL_REPO"] == "/models"
    assert audit["environment"]["MEDROBUST_AUDIT_MODELS"] == "${MEDROBUST_AUDIT_MODELS:-}"
    assert any(v.startswith("model-repo:/models") for v in audit["volumes"])
    for name in ("frontend", "audit-worker"):
        url = services[name]["environment"]["MEDROBUST_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg2://") and "@postgres:5432/" in url, name


def test_tf_serving_flags_point_at_mounted_files(services: dict) -> None:
    tf = services["tf-serving"]
    flags = _flags(tf["command"])
    assert "enable_batching" in flags
    assert flags["model_config_file"] == "/models/models.config"
    assert flags["model_config_file_poll_wait_seconds"] == "60"
    assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")
    mounts = {}
    for volume in tf["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    for flag in ("monitoring_config_file", "batching_parameters_file"):
        source = mounts[flags[flag]]
        assert (DEPLOY / source).is_file(), f"--{flag} mounts {source}, which does not exist"


def test_every_bind_mounted_file_exists(services: dict) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.startswith("./data"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_monitoring_config_parses_and_enables_the_prometheus_path() -> None:
    monitoring = text_format.Parse(
        (DEPLOY / "tf-serving" / "monitoring.config").read_text(),
        message_class("tensorflow.serving.MonitoringConfig")(),
    )
    assert monitoring.prometheus_config.enable
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    paths = {job["job_name"]: job.get("metrics_path", "/metrics") for job in scrape["scrape_configs"]}
    assert paths["tf-serving"] == monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_batching_config_parses_and_is_consistent() -> None:
    batching = text_format.Parse(
        (DEPLOY / "tf-serving" / "batching.config").read_text(),
        message_class("tensorflow.serving.BatchingParameters")(),
    )
    sizes = list(batching.allowed_batch_sizes)
    assert batching.max_batch_size.value > 0 and batching.num_batch_threads.value >= 1
    # TF Serving refuses to start otherwise.
    assert sizes == sorted(sizes) and sizes[-1] == batching.max_batch_size.value


def test_the_proto_parser_rejects_unknown_fields() -> None:
    """Guards the two tests above: text_format must fail on a misspelt field."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 1 }", message_class("tensorflow.serving.BatchingParameters")())


def test_sample_models_config_parses_and_follows_the_repository_layout() -> None:
    config = text_format.Parse(
        (DEPLOY / "tf-serving" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    models = config.model_config_list.config
    assert len(models) == 12
    for model in models:
        assert MODEL_NAME.fullmatch(model.name), model.name
        assert model.base_path == f"/models/{model.name}"
        assert model.model_platform == "tensorflow"
        # Two versions served, so an audit can pin the previous one for comparison.
        assert model.model_version_policy.latest.num_versions == 2


def test_the_init_service_seeds_a_models_config_tf_serving_accepts(services: dict) -> None:
    script = services["model-repo-init"]["command"][0]
    written = re.search(r'write_text\("(.*?)"\)', script).group(1).encode().decode("unicode_escape")
    config = text_format.Parse(written, model_server_config_pb2.ModelServerConfig())
    assert config.HasField("model_config_list") and len(config.model_config_list.config) == 0
    compile(script, "<model-repo-init>", "exec")


def _nginx_directives() -> list[tuple[str, str]]:
    """(name, arguments) of every directive in the nginx template, in order (each sits on one line)."""
    directives = []
    for line in NGINX_TEMPLATE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line.endswith(";"):
            name, _, arguments = line[:-1].partition(" ")
            directives.append((name, arguments.strip()))
    return directives


def _seconds(value: str) -> int:
    assert re.fullmatch(r"\d+s", value), f"expected a time in seconds like 10s, got {value!r}"
    return int(value[:-1])


def test_users_reach_the_front_end_only_through_nginx(services: dict) -> None:
    frontend, nginx = services["frontend"], services["nginx"]
    assert "ports" not in frontend, "gunicorn must not be published: slow clients would reach its threads"
    listen = nginx["environment"]["MEDROBUST_PROXY_LISTEN"]
    assert nginx["ports"] == [f"8000:{listen}"]  # where users found the front end before
    assert nginx["environment"]["MEDROBUST_PROXY_UPSTREAM"] == f"frontend:{_flags(frontend['command'])['port']}"
    assert f"http://127.0.0.1:{listen}/healthz" in nginx["healthcheck"]["test"]
    # nginx resolves `frontend` once: it starts after the front end and restarts with it.
    assert nginx["depends_on"]["frontend"] == {"condition": "service_healthy", "restart": True}
    assert "./nginx/medrobust.conf.template:/etc/nginx/templates/medrobust.conf.template:ro" in nginx["volumes"]
    # Beyond loopback only the proxy and Grafana (which has its own login).
    public = {name for name, service in services.items()
              for port in service.get("ports", []) if not port.startswith("127.0.0.1:")}
    assert public == {"nginx", "grafana"}


def test_nginx_sets_every_variable_of_its_template_and_only_those(services: dict) -> None:
    text = NGINX_TEMPLATE.read_text()
    # Braced only: the one form the system test renders too (tests/integration/test_service_slow_clients.py).
    assert len(TEMPLATE_VARIABLE.findall(text)) == len(re.findall(r"\$\{MEDROBUST_\w+\}", text)) > 0
    environment = services["nginx"]["environment"]
    # Only MEDROBUST_ variables are substituted: nginx's $host, $scheme... stay nginx's.
    assert environment["NGINX_ENVSUBST_FILTER"] == "MEDROBUST_"
    assert set(TEMPLATE_VARIABLE.findall(text)) == {name for name in environment if name.startswith("MEDROBUST_")}


def test_the_nginx_template_buffers_whole_requests_and_times_out_slow_clients() -> None:
    directives = _nginx_directives()
    single = {name: arguments for name, arguments in directives if name not in ("proxy_set_header", "error_page", "return")}
    assert single["listen"] == "${MEDROBUST_PROXY_LISTEN}"
    assert single["proxy_pass"] == "http://${MEDROBUST_PROXY_UPSTREAM}"
    # Whole requests before gunicorn sees them, up to the front end's own limit.
    assert single["proxy_request_buffering"] == "on" and single["proxy_buffering"] == "on"
    assert single["client_max_body_size"] == "${MEDROBUST_MAX_UPLOAD_BYTES}"
    # Slow clients are closed soon: well before a person would give up on an answer.
    assert _seconds(single["client_header_timeout"]) <= 15 and _seconds(single["client_body_timeout"]) <= 15
    # gunicorn's own request timeout decides, not nginx's.
    gunicorn_timeout = int(re.search(r'"timeout": (\d+)', (ROOT / "medrobust" / "web_server.py").read_text())[1])
    assert _seconds(single["proxy_read_timeout"]) > gunicorn_timeout
    # A response that must stream can still opt out of buffering.
    assert "proxy_ignore_headers" not in single and single.get("proxy_intercept_errors", "off") == "off"
    headers = dict(arguments.split(None, 1) for name, arguments in directives if name == "proxy_set_header")
    assert headers == {
        "Host": "$http_host", "X-Forwarded-For": "$proxy_add_x_forwarded_for", "X-Forwarded-Proto": "$scheme",
        "X-Forwarded-Host": "$http_host", "X-Real-IP": "$remote_addr",
    }


def test_the_errors_nginx_makes_itself_are_the_apis_json() -> None:
    from service.errors import _HTTP_CODES

    text = NGINX_TEMPLATE.read_text().replace("${MEDROBUST_MAX_UPLOAD_BYTES}", "20000000")
    pages = dict(re.findall(r"^\s*error_page (\d+) (@\w+);", text, re.MULTILINE))
    assert set(pages) == {"413", "502", "504"}
    errors = {}
    for status, location in pages.items():
        block = re.search(rf"location {location} \{{(.*?)\}}\n", text, re.DOTALL)[1]
        assert "default_type application/json;" in block, location
        code, answer = re.search(r"return (\d+) '(.*)';", block).groups()
        assert code == status, location
        errors[status] = json.loads(answer.replace("\\n", ""))["error"]
        assert set(errors[status]) == {"code", "message"} and errors[status]["message"], location
    # A body over the limit reads the same whether nginx or the front end refuses it.
    assert errors["413"]["code"] == _HTTP_CODES[413]
    assert "at most 20000000 bytes (MEDROBUST_MAX_UPLOAD_BYTES)" in errors["413"]["message"]
