"""ServiceConfig: defaults, the environment, flags over the environment, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.contract.config import ServiceConfig, read_config


def test_defaults_match_the_issue():
    config = ServiceConfig(model_repo=Path("/models"))
    assert (config.max_upload_bytes, config.max_pixels) == (20_000_000, 50_000_000)
    assert config.tf_serving is None and config.api_token is None and config.admin_token is None
    # /metrics apart from the API, on the API's host unless told otherwise; two decodes at once.
    assert (config.metrics_port, config.metrics_host, config.max_decodes) == (9102, None, 2)


def test_from_env_and_overrides():
    env = {
        "MEDROBUST_MODEL_REPO": "/models", "MEDROBUST_TF_SERVING": "tf:8500", "MEDROBUST_WORKERS": "3",
        "MEDROBUST_API_TOKEN": "t", "MEDROBUST_ADMIN_TOKEN": "", "MEDROBUST_MAX_PIXELS": "1000",
        "MEDROBUST_GRPC_DEADLINE_SECONDS": "2.5", "MEDROBUST_MODELS": "a, b",
    }
    config = read_config(ServiceConfig, {"workers": None, "port": 9000}, env)
    assert config.model_repo == Path("/models") and config.tf_serving == "tf:8500"
    assert (config.workers, config.port, config.max_pixels, config.grpc_deadline_seconds) == (3, 9000, 1000, 2.5)
    assert config.api_token == "t" and config.admin_token is None  # empty means unset
    assert config.models == ("a", "b")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_WORKERS": "two"}, "MEDROBUST_WORKERS: expected an integer, got 'two'"),
        ({"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_WORKERS": "0"}, "^MEDROBUST_WORKERS: expected at least 1, got 0$"),
        ({"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_MAX_LOADED": "0"}, "^MEDROBUST_MAX_LOADED: expected at least 1, got 0$"),
        ({"MEDROBUST_TF_SERVING": "tf:8500"}, "expected a model repository .* beside TF Serving, or --models"),
        ({"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_MAX_DECODES": "0"}, "^MEDROBUST_MAX_DECODES: expected at least 1, got 0$"),
        ({"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_METRICS_PORT": "8000"},
         r"^MEDROBUST_METRICS_PORT: expected a port other than the API's \(8000\), got 8000$"),
        ({"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_METRICS_PORT": "70000"}, "^MEDROBUST_METRICS_PORT: expected a port in 0..65535, got 70000$"),
    ],
)
def test_refusals(env, message):
    with pytest.raises(ValueError, match=message):
        read_config(ServiceConfig, {}, env)


def test_the_embedded_backend_reads_the_one_default_repository():
    from training.contract.config import DEFAULT_MODEL_REPO, AuditConfig, TrainConfig

    assert read_config(ServiceConfig, {}, {}).model_repo == DEFAULT_MODEL_REPO == Path("model-repo")
    assert read_config(AuditConfig, {}, {}).model_repo == read_config(TrainConfig, {}, {}).model_repo == DEFAULT_MODEL_REPO
    # Against TF Serving no repository is assumed: the served models are named instead.
    assert read_config(ServiceConfig, {}, {"MEDROBUST_TF_SERVING": "tf:8500", "MEDROBUST_MODELS": "m"}).model_repo is None


def test_is_frozen():
    config = ServiceConfig(model_repo=Path("/m"))
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_the_audit_store_and_report_folder_come_from_the_environment_or_flags():
    env = {"MEDROBUST_MODEL_REPO": "/m", "MEDROBUST_DATABASE_URL": "sqlite:///a.sqlite", "MEDROBUST_AUDIT_ARTEFACTS": "/tmp/r"}
    config = read_config(ServiceConfig, {}, env)
    assert config.database_url == "sqlite:///a.sqlite" and config.audit_artefacts == Path("/tmp/r")
    assert read_config(ServiceConfig, {"database_url": "postgresql://db/x"}, env).database_url == "postgresql://db/x"
    assert read_config(ServiceConfig, {}, {"MEDROBUST_MODEL_REPO": "/m"}).database_url is None


def test_a_bad_flag_is_named_as_the_user_typed_it():
    with pytest.raises(ValueError, match="^--port: expected a port in 0..65535, got 70000$"):
        read_config(ServiceConfig, {"port": 70000}, {"MEDROBUST_MODEL_REPO": "/m"})
