"""The front end refuses to listen beyond loopback with an open API unless told to, and warns when told."""

from __future__ import annotations

import logging

import pytest

from medrobust.cli import main
from training.contract.config import ConfigError, ServiceConfig, is_loopback, parse_bool, read_config

REFUSED = (
    "expected a loopback address (127.0.0.1, ::1, localhost) while no API token is set, got '0.0.0.0': "
    "set MEDROBUST_API_TOKEN, or serve an open API on purpose with --allow-anonymous (MEDROBUST_ALLOW_ANONYMOUS=1)"
)
WARNING = "the API is open: no MEDROBUST_API_TOKEN, and listening on 0.0.0.0"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("HOST", "API_TOKEN", "ADMIN_TOKEN", "ALLOW_ANONYMOUS", "TF_SERVING", "MODEL_REPO", "MODELS", "PORT"):
        monkeypatch.delenv(f"MEDROBUST_{name}", raising=False)


@pytest.fixture(autouse=True)
def no_port_probe(monkeypatch):
    """The commands here use the default ports, which another process on this machine may hold: exposure, not
    ports, is what these tests are about (tests/unit/test_cli_consistency.py covers the port check)."""
    monkeypatch.setattr("medrobust.ports.check_free", lambda *listens: None)


@pytest.fixture
def served(monkeypatch):
    """The configs `medrobust serve` would hand gunicorn; none is started."""
    import medrobust.web_server

    configs: list[ServiceConfig] = []
    monkeypatch.setattr(medrobust.web_server, "serve", lambda config: configs.append(config) or 0)
    return configs


@pytest.mark.parametrize("text, value", [
    ("1", True), ("true", True), ("YES", True), (" True ", True), ("0", False), ("false", False), ("No", False),
])
def test_parse_bool_reads_the_six_spellings(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("raw", ["maybe", "on", "2", "y"])
def test_a_malformed_allow_anonymous_names_the_variable(raw):
    with pytest.raises(ConfigError) as caught:
        read_config(ServiceConfig, {"model_repo": "."}, {"MEDROBUST_ALLOW_ANONYMOUS": raw})
    assert str(caught.value) == f"MEDROBUST_ALLOW_ANONYMOUS: expected one of 1, true, yes, 0, false, no, got {raw!r}"


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True), ("LocalHost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("frontend", False), ("", False),
])
def test_loopback_is_127_slash_8_ipv6_one_and_localhost(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_on_all_interfaces_without_a_token_is_a_usage_error_naming_the_flag(tmp_path, capsys, served):
    assert main(["serve", "--host", "0.0.0.0", "--model-repo", str(tmp_path)]) == 2
    assert f"medrobust serve: error: --host: {REFUSED}" in capsys.readouterr().err
    assert served == []  # no server started


def test_the_host_from_the_environment_is_refused_naming_the_variable(tmp_path, capsys, served, monkeypatch):
    monkeypatch.setenv("MEDROBUST_HOST", "0.0.0.0")
    assert main(["serve", "--model-repo", str(tmp_path)]) == 2
    assert f"medrobust serve: error: MEDROBUST_HOST: {REFUSED}" in capsys.readouterr().err
    assert served == []


@pytest.mark.parametrize("flags, environ", [
    (["--allow-anonymous"], {}),
    ([], {"MEDROBUST_ALLOW_ANONYMOUS": "1"}),
    ([], {"MEDROBUST_ALLOW_ANONYMOUS": "yes"}),
], ids=["flag", "variable-1", "variable-yes"])
def test_an_open_api_beyond_loopback_starts_when_allowed_and_warns(tmp_path, served, monkeypatch, caplog, flags, environ):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING):
        assert main(["serve", "--host", "0.0.0.0", "--model-repo", str(tmp_path), *flags]) == 0
    (config,) = served
    assert (config.host, config.api_token, config.allow_anonymous) == ("0.0.0.0", None, True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(WARNING)


def test_the_flag_wins_over_a_variable_that_says_no(tmp_path, served, monkeypatch):
    monkeypatch.setenv("MEDROBUST_ALLOW_ANONYMOUS", "false")
    assert main(["serve", "--host", "0.0.0.0", "--model-repo", str(tmp_path)]) == 2
    assert main(["serve", "--host", "0.0.0.0", "--model-repo", str(tmp_path), "--allow-anonymous"]) == 0
    assert [c.allow_anonymous for c in served] == [True]


@pytest.mark.parametrize("host, environ", [
    ("0.0.0.0", {"MEDROBUST_API_TOKEN": "t0ken"}),  # a token closes the API: no flag needed
    ("127.0.0.1", {}),
    ("::1", {}),
    ("localhost", {}),
])
def test_a_token_or_a_loopback_host_needs_no_permission_and_no_warning(tmp_path, served, monkeypatch, caplog, host, environ):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING):
        assert main(["serve", "--host", host, "--model-repo", str(tmp_path)]) == 0
    assert served[0].host == host and served[0].allow_anonymous is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_up_refuses_before_training(tmp_path, capsys, monkeypatch):
    from medrobust.commands import up

    def train(*args, **kwargs):
        pytest.fail("`up` started training before refusing the host")

    monkeypatch.setattr(up, "train_quick_pair", train)
    assert main(["up", "--host", "0.0.0.0", "--model-repo", str(tmp_path / "repo"), "--dataset", "synthetic:30"]) == 2
    assert f"medrobust up: error: --host: {REFUSED}" in capsys.readouterr().err


def test_up_allow_anonymous_reaches_the_front_ends_config(tmp_path, monkeypatch, caplog):
    """`up` reads its ServiceConfig with read_config too: the flag must get there (training and serving stubbed)."""
    from medrobust.commands import up

    served: list[ServiceConfig] = []
    monkeypatch.setattr(up, "_in_child", lambda target, **kwargs: 0)  # the training child
    monkeypatch.setattr(up, "_serve", lambda args, config, *rest: served.append(config) or 0)
    with caplog.at_level(logging.WARNING):
        status = main(["up", "--host", "0.0.0.0", "--allow-anonymous", "--model-repo", str(tmp_path / "repo"),
                       "--dataset", "synthetic:30"])
    assert status == 0
    (config,) = served
    assert (config.host, config.allow_anonymous, config.model_repo) == ("0.0.0.0", True, tmp_path / "repo")
    assert any(r.getMessage().startswith(WARNING) for r in caplog.records if r.levelno == logging.WARNING)
