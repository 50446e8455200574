"""TF Serving's address (HOST:PORT or dns:///HOST:PORT) refused at parse time when malformed, and
the TF Serving client's retry settings refused at construction when gRPC could not honour them."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.tfserving import TFServingPredictor
from training.contract.config import AuditConfig, ConfigError, FieldError, ServiceConfig, read_config

ACCEPTED = [
    "tf-serving:8500",
    "dns:///tf-serving:8500",
    "dns:///tf-serving.medrobust.svc.cluster.local:8500",
    "10.0.0.7:8500",
    "[::1]:8500",
    "dns:///[fd00::7]:8500",
]
REFUSED = [
    "tf-serving",  # no port: gRPC would dial 443
    "dns:///tf-serving",
    "dns://10.0.0.10/tf-serving:8500",  # a DNS server as authority: not a form the deployments use
    "ipv4:127.0.0.1:8500",
    "http://tf-serving:8500",
    "tf-serving:0",
    "tf-serving:65536",
    "tf-serving:grpc",
    "tf-serving:８５００",  # full-width digits
    "dns:///:8500",
    "[::1:8500",
    "[tf-serving]:8500",
    "tf serving:8500",
    " tf-serving:8500",
    "-tf-serving:8500",
]


def _refusal(target: str) -> str:
    return (
        "expected TF Serving's gRPC address as HOST:PORT or dns:///HOST:PORT with a port in 1..65535 "
        f"(e.g. dns:///tf-serving:8500 for a headless Service), got {target!r}"
    )


@pytest.mark.parametrize("config", [ServiceConfig, AuditConfig])
@pytest.mark.parametrize("target", ACCEPTED)
def test_an_address_or_a_dns_target_is_kept_as_given(config, target):
    environ = {"MEDROBUST_TF_SERVING": target, "MEDROBUST_MODEL_REPO": "/models"}
    assert read_config(config, {}, environ).tf_serving == target


@pytest.mark.parametrize("config", [ServiceConfig, AuditConfig])
@pytest.mark.parametrize("target", REFUSED)
def test_a_malformed_target_is_refused_naming_the_variable(config, target):
    environ = {"MEDROBUST_TF_SERVING": target, "MEDROBUST_MODEL_REPO": "/models"}
    with pytest.raises(ConfigError) as caught:
        read_config(config, {}, environ)
    assert str(caught.value) == f"MEDROBUST_TF_SERVING: {_refusal(target)}"


def test_a_malformed_flag_is_refused_naming_the_flag():
    with pytest.raises(ConfigError) as caught:
        read_config(AuditConfig, {"tf_serving": "dns:///tf-serving"}, {"MEDROBUST_TF_SERVING": "dns:///tf-serving:8500"})
    assert str(caught.value) == f"--tf-serving: {_refusal('dns:///tf-serving')}"


def test_a_config_built_directly_is_checked_too():
    with pytest.raises(FieldError, match=r"^tf_serving: expected TF Serving's gRPC address"):
        ServiceConfig(model_repo=Path("/models"), tf_serving="tf-serving")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"retries": 5}, "expected retries in 0..4, got 5"),
        ({"retries": -1}, "expected retries in 0..4, got -1"),
        ({"backoff_seconds": 0}, "expected backoff_seconds > 0, got 0"),
        ({"retry_max_tokens": 0}, r"expected retry_max_tokens in \(0, 1000\], got 0"),
        ({"retry_max_tokens": 1001}, r"expected retry_max_tokens in \(0, 1000\], got 1001"),
        ({"retry_token_ratio": 0}, r"expected retry_token_ratio in \(0, 1\], got 0"),
    ],
)
def test_retry_settings_grpc_cannot_honour_are_refused(settings, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        TFServingPredictor("dns:///tf-serving:8500", models=("m",), **settings)
