"""Every command behaves alike: one default per setting, help on every flag, a one-line error (and a
non-zero exit) for what it cannot work with, and bad values refused before TensorFlow is imported."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

import pytest

from medrobust.cli import build_parser, main
from tests.project import PROJECT
from training.contract.config import DEFAULT_MODEL_REPO, ServiceConfig, default_of


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("MODEL_REPO", "TF_SERVING", "MODELS", "HOST", "PORT", "METRICS_PORT", "METRICS_HOST", "API_TOKEN",
                 "ADMIN_TOKEN", "DATABASE_URL", "AUDIT_METRICS_PORT", "AUDIT_DATASET", "WORKDIR"):
        monkeypatch.delenv(f"MEDROBUST_{name}", raising=False)


@pytest.fixture
def no_gunicorn(monkeypatch):
    """gunicorn must not start: the commands are to stop before it."""
    from gunicorn.app.base import BaseApplication

    def run(self):
        pytest.fail("gunicorn was started")

    monkeypatch.setattr(BaseApplication, "run", run)


@pytest.fixture
def busy_port():
    """A port something is listening on, as a server holding it would be."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def _actions(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                yield f"{path} {name}", None, name in helped
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, action, bool(action.help) and action.help != argparse.SUPPRESS


def test_every_flag_of_every_subcommand_has_help():
    missing = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}" if action else f"{path} (the command)"
        for path, action, helped in _actions(build_parser(), "medrobust")
        if not helped
    ]
    assert missing == []


def test_the_help_walk_finds_a_flag_without_help():
    parser = argparse.ArgumentParser(prog="medrobust")
    sub = parser.add_subparsers().add_parser("x", help="a command")
    sub.add_argument("--bare")
    assert [(path, action.dest) for path, action, helped in _actions(parser, "medrobust") if action and not helped] == [
        ("medrobust x", "bare")
    ]


# -- one model repository default --------------------------------------------------------------------
def test_serve_beside_model_repo_needs_no_flag(tmp_path, monkeypatch):
    import medrobust.web_server

    (tmp_path / DEFAULT_MODEL_REPO).mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("medrobust.ports.check_free", lambda *listens: None)
    served: list[ServiceConfig] = []
    monkeypatch.setattr(medrobust.web_server, "serve", lambda config: served.append(config) or 0)
    assert main(["serve"]) == 0
    assert served[0].model_repo == DEFAULT_MODEL_REPO


@pytest.mark.parametrize("argv", [
    ["serve"], ["models"], ["export", "best.keras"], ["train", "--dataset", "synthetic"], ["audit", "run"], ["up"],
])
def test_every_command_reads_the_same_model_repository_by_default(argv):
    from medrobust.commands import read_service_config
    from medrobust.commands.audit import config_from_args
    from medrobust.commands.train import _settings
    from medrobust.commands.up import audit_config_for_up

    args = build_parser().parse_args(argv)
    if argv[0] == "serve":
        repo = read_service_config(vars(args)).model_repo
    elif argv[0] == "audit":
        repo = config_from_args(args).model_repo
    elif argv[0] == "up":
        repo = audit_config_for_up(args, read_service_config({"model_repo": _settings(args).model_repo})).model_repo
    else:
        repo = _settings(args).model_repo
    assert repo == DEFAULT_MODEL_REPO


def test_up_audits_and_serves_metrics_on_the_front_ends_metrics_port(monkeypatch):
    """`up` has one metrics server, `serve`'s: the same flag, variable and default."""
    from medrobust.commands import read_service_config
    from medrobust.commands.up import audit_config_for_up

    args = build_parser().parse_args(["up"])
    config = read_service_config({"model_repo": "."})
    assert audit_config_for_up(args, config).metrics_port == config.metrics_port == default_of(ServiceConfig, "metrics_port")
    monkeypatch.setenv("MEDROBUST_METRICS_PORT", "9555")
    assert audit_config_for_up(args, read_service_config({"model_repo": "."})).metrics_port == 9555


# -- one line and a non-zero exit ----------------------------------------------------------------------
def test_models_on_a_missing_repository_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert main(["models", "--model-repo", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"medrobust models: error: --model-repo: expected a model repository directory, got '{missing}' (no such "
        "directory): name one with --model-repo or MEDROBUST_MODEL_REPO, or create it with `medrobust train`\n"
    )


def test_models_on_an_empty_repository_says_so_and_succeeds(tmp_path, capsys):
    assert main(["models", "--model-repo", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no models in {tmp_path}\n"


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_serve_on_a_port_in_use_is_one_line_naming_the_flag(tmp_path, capsys, no_gunicorn, busy_port, flag):
    other = "--metrics-port" if flag == "--port" else "--port"
    assert main(["serve", "--model-repo", str(tmp_path), flag, str(busy_port), other, "0"]) == 1
    variable = "MEDROBUST_PORT" if flag == "--port" else "MEDROBUST_METRICS_PORT"
    assert capsys.readouterr().err == (
        f"medrobust serve: error: {flag}: expected a free port, got {busy_port}: 127.0.0.1:{busy_port} is in use by "
        f"another process; choose another with {flag} (or {variable})\n"
    )


def test_up_on_a_port_in_use_stops_before_training(tmp_path, capsys, monkeypatch, no_gunicorn, busy_port):
    from medrobust.commands import up

    monkeypatch.setattr(up, "_in_child", lambda *a, **k: pytest.fail("`up` started training on a busy port"))
    assert main(["up", "--model-repo", str(tmp_path / "repo"), "--port", str(busy_port), "--metrics-port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"medrobust up: error: --port: expected a free port, got {busy_port}") and err.count("\n") == 1


def test_a_free_port_passes_the_check():
    from medrobust.ports import Listen, check_free

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_free(Listen("127.0.0.1", port, "--port", "MEDROBUST_PORT"), Listen("::1", 0, "--metrics-port", "X"))


# -- bad values before TensorFlow --------------------------------------------------------------------
# Runs the command in a fresh interpreter (this one has TensorFlow loaded already) and reports whether
# the command imported TensorFlow before it refused the value.
WRAPPER = """
import sys
from medrobust.cli import main
status = main(sys.argv[1:])
print("tensorflow imported:", "tensorflow" in sys.modules, file=sys.stderr)
sys.exit(status)
"""


@pytest.fixture
def env():
    """This environment without MEDROBUST_* settings, importing the project from this checkout."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MEDROBUST_")}, "PYTHONPATH": str(PROJECT)}


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--dataset", "nope:x"], "expected a dataset spec KIND:PATH with KIND one of"),
    (["train", "--dataset", "synthetic", "--backbone", "inception_resnet_v2", "--image-size", "32"],
     "inception_resnet_v2 needs --image-size >= 75, got 32"),
    (["audit", "run", "--dataset", "synthetic", "--epsilons", "0", "-1"], "expected a finite epsilon >= 0, got '-1'"),
    (["audit", "worker", "--dataset", "synthetic", "--schedule", "61 * * * *"], "--schedule: expected a 5-field cron"),
    (["reproduce", "--dataset", "synthetic", "--backbones", "inception_resnet_v2", "--image-size", "32"],
     "inception_resnet_v2 needs --image-size >= 75, got 32"),
], ids=["train-dataset", "train-size", "audit-epsilon", "worker-schedule", "reproduce-size"])
def test_a_bad_value_is_refused_before_tensorflow_is_imported(tmp_path, env, argv, message):
    done = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stderr.endswith("tensorflow imported: False\n"), done.stderr


@pytest.mark.slow  # imports TensorFlow: 16-18 s
def test_the_wrapper_sees_tensorflow_when_a_command_imports_it(tmp_path, env):
    """The check above can fail: a command that gets past its values imports TensorFlow, and the wrapper says so."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, "audit", "run", "--dataset", "synthetic:30",
                           "--model-repo", str(tmp_path / "absent"), "--database-url", f"sqlite:///{tmp_path / 'a.sqlite'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert done.stderr.endswith("tensorflow imported: True\n"), done.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--image-size", "16"], "resnet50 needs --image-size >= 32, got 16"),
    (["--dataset", "nope:x"], "expected a dataset spec KIND:PATH with KIND one of"),
    (["--samples", "5", "--database-url", "sqlite:///a.sqlite", "--metrics-port", "70000"], "--metrics-port: expected a port in 0..65535"),
])
def test_up_refuses_a_bad_value_before_training(tmp_path, capsys, monkeypatch, argv, message):
    from medrobust.commands import up

    monkeypatch.setattr(up, "_in_child", lambda *a, **k: pytest.fail("`up` started training"))
    assert main(["up", "--model-repo", str(tmp_path / "repo"), *argv]) == 2
    assert message in capsys.readouterr().err
