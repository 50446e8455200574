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
}
MEDROBUST_SERVICES = {"model-repo-init", "frontend", "audit-worker", "train"}
MODEL_NAME = re.compile(r"(derm|dr|pneumothorax)-(resnet50|inception_resnet_v2)-(attention|baseline)")


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
    grpc = f"tf-serving:{tf_flags['port']}"
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
