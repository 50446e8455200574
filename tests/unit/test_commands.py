"""The commands read one configuration, validated while parsing, and hand it whole to the parts."""

from __future__ import annotations

import pytest

from medrobust.cli import main


def test_a_bad_schedule_is_a_usage_error_naming_the_flag_before_anything_starts(tmp_path, capsys):
    database = tmp_path / "audits.sqlite"
    status = main([
        "audit", "worker", "--schedule", "61 * * * *", "--dataset", "synthetic:30", "--model-repo", str(tmp_path),
        "--database-url", f"sqlite:///{database}",
    ])
    assert status == 2
    err = capsys.readouterr().err
    assert "medrobust audit: error: --schedule: expected a 5-field cron expression, got '61 * * * *'" in err
    assert not database.exists()  # refused while parsing: no store was opened


def test_a_bad_schedule_from_the_environment_names_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDROBUST_AUDIT_SCHEDULE", "every night")
    assert main(["audit", "worker", "--dataset", "synthetic:30", "--model-repo", str(tmp_path)]) == 2
    assert "MEDROBUST_AUDIT_SCHEDULE: expected a 5-field cron expression, got 'every night'" in capsys.readouterr().err


def test_the_grpc_deadline_reaches_the_audits_predictor(monkeypatch):
    from medrobust.cli import build_parser
    from medrobust.commands.audit import config_from_args
    from medrobust.compose import build_audit_predictor

    monkeypatch.setenv("MEDROBUST_GRPC_DEADLINE_SECONDS", "2.5")
    args = build_parser().parse_args(["audit", "run", "--tf-serving", "127.0.0.1:1", "--served-models", "demo-resnet50-baseline"])
    config = config_from_args(args)
    predictor = build_audit_predictor(config)
    try:
        assert config.grpc_deadline_seconds == 2.5 and predictor.deadline_seconds == 2.5
    finally:
        predictor.close()


def test_a_bad_value_from_a_flag_names_the_flag(capsys):
    assert main(["serve", "--port", "70000", "--model-repo", "."]) == 2
    assert "medrobust serve: error: --port: expected a port in 0..65535, got 70000" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["audit", "run"], ["serve"]])
def test_the_tf_serving_batch_limit_is_a_flag_that_reaches_the_predictor(command):
    from medrobust.cli import build_parser
    from medrobust.commands import read_service_config
    from medrobust.commands.audit import config_from_args
    from medrobust.compose import build_audit_predictor, build_service_predictor

    served = "--served-models" if command[0] == "audit" else "--models"  # the audit's --models are what to audit
    args = build_parser().parse_args([*command, "--tf-serving", "127.0.0.1:1", served, "m", "--tf-serving-max-batch", "8"])
    if command[0] == "audit":
        config = config_from_args(args)
        predictor = build_audit_predictor(config)
    else:
        config = read_service_config(vars(args))
        predictor = build_service_predictor(config, start_polling=False)
    try:
        assert config.tf_serving_max_batch == 8 and predictor.max_batch_size == 8
    finally:
        predictor.close()


def test_the_models_to_audit_are_not_the_served_ones(tmp_path):
    """`audit run --models X` names what to audit; TF Serving's served names come from the repository
    (or --served-models), so a model that is not served stays one the audit can refuse."""
    from medrobust.cli import build_parser
    from medrobust.commands.audit import config_from_args
    from medrobust.compose import build_audit_predictor
    from training.contract.repository import write_models_config

    version = tmp_path / "derm-resnet50-baseline" / "1" / "assets.extra"
    version.mkdir(parents=True)
    (version / "model_card.json").write_text("{}")
    write_models_config(tmp_path)
    args = build_parser().parse_args(["audit", "run", "--tf-serving", "127.0.0.1:1", "--models", "nope-resnet50-baseline"])
    config = config_from_args(args)
    config = config.with_(model_repo=tmp_path)  # as MEDROBUST_MODEL_REPO beside --tf-serving gives it
    predictor = build_audit_predictor(config)
    try:
        assert predictor.model_names() == ("derm-resnet50-baseline",)
    finally:
        predictor.close()

    named = config_from_args(build_parser().parse_args(
        ["audit", "run", "--tf-serving", "127.0.0.1:1", "--models", "a", "--served-models", "b", "c"]))
    predictor = build_audit_predictor(named)
    try:
        assert named.models == ("a",) and predictor.model_names() == ("b", "c")
    finally:
        predictor.close()
