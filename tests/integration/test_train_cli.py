"""`medrobust train`, `export` and `models` end to end on the synthetic set."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from medrobust.cli import main
from training.contract import repository

# The tests on `trained` share a real training run: a minute of CPU, so --all-tiers (and CI), not the quick tier.
SLOW = pytest.mark.slow

def _train(repo, workdir, *extra):
    return main([
        "train", "--dataset", "synthetic:90", "--task", "demo", "--baseline", "--image-size", "32",
        "--epochs", "1", "--limit", "40", "--batch-size", "16", "--model-repo", str(repo),
        "--workdir", str(workdir), *extra,
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-cli")
    repo, workdir = root / "repo", root / "work"
    out, err = io.StringIO(), io.StringIO()  # neither is a terminal: one line per epoch, no bar
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert _train(repo, workdir) == 0
    return repo, workdir, out.getvalue(), err.getvalue()


@SLOW
def test_train_shows_which_model_its_epochs_rate_and_export_steps(trained):
    _, _, out, err = trained
    assert "model 1 of 1 demo-resnet50-baseline: 1 epoch(s) of 40 images, batch 16" in err
    assert re.search(r"model 1 of 1 demo-resnet50-baseline epoch 1/1: 40 images in [\d.]+ s \([\d.]+ img/s\), "
                     r"loss [\d.]+, accuracy [\d.]+, val_loss [\d.]+, val_accuracy [\d.]+; elapsed \d+:\d\d, ETA 0:00", err), err
    assert "\r" not in err and "img/s]" not in err  # no tqdm bar outside a terminal
    steps = re.findall(r"exporting demo-resnet50-baseline \[[\d.]+ s\]: (.*)", out)
    assert steps == ["tracing and saving serving_default, gradcam and vjp",
                     "writing the model card and TF Serving warmup records", "published version 1"], out


@SLOW
def test_train_exports_a_version_with_metrics_and_the_recipe(trained):
    repo, workdir, _, _ = trained
    (model,) = repository.list_models(repo)
    assert (model.name, model.versions) == ("demo-resnet50-baseline", (1,))
    card = model.card
    assert card["dataset"]["synthetic"] is True and card["dataset"]["kind"] == "synthetic"
    assert card["dataset"]["splits"]["train"] > 40
    val = card["metrics"]["val"]
    assert 0.0 <= val["accuracy"] <= 1.0 and set(val["auc"]) == set(card["class_names"])
    training = card["training"]
    assert (training["learning_rate"], training["adam_epsilon"], training["patience"]) == (0.01, 0.1, 40)
    assert training["limit"] == 40 and training["train_images"] == 40 and training["epochs"] == 1
    assert (workdir / "demo-resnet50-baseline" / "best.keras").is_file()
    assert (repo / "models.config").read_text().count("config {") == 1


@SLOW
def test_models_lists_the_repository(trained, capsys):
    repo, _, _, _ = trained
    assert main(["models", "--model-repo", str(repo), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["versions"]) for m in listed][0][0] == "demo-resnet50-baseline"
    assert main(["models", "--model-repo", str(repo)]) == 0
    assert "demo-resnet50-baseline" in capsys.readouterr().out


@SLOW
def test_export_re_exports_a_checkpoint_as_the_next_version(trained):
    repo, workdir, _, _ = trained
    before = repository.versions_of(repo / "demo-resnet50-baseline")
    assert main(["export", str(workdir / "demo-resnet50-baseline" / "best.keras"), "--model-repo", str(repo)]) == 0
    after = repository.versions_of(repo / "demo-resnet50-baseline")
    assert after == (*before, before[-1] + 1)
    card = repository.read_card(repo / "demo-resnet50-baseline" / str(after[-1]))
    assert card["task"] == "demo" and card["dataset"]["kind"] == "synthetic"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "nonsense:x"], "expected a dataset spec KIND:PATH"),
        (["train", "--dataset", "ham10000:/no/such/dir"], "expected a directory"),
        (["train", "--dataset", "synthetic", "--backbone", "inception_resnet_v2", "--image-size", "32"],
         "inception_resnet_v2 needs --image-size >= 75, got 32"),
        (["train", "--dataset", "synthetic", "--all-variants", "--image-size", "64"],
         "inception_resnet_v2 needs --image-size >= 75, got 64"),
        (["train", "--dataset", "synthetic", "--epoch-fraction", "1.5"], "expected an epoch fraction in (0, 1], got 1.5"),
        (["export", "/no/such.keras"], "expected a .keras checkpoint file"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, tmp_path, capsys):
    assert main([*argv, "--model-repo", str(tmp_path / "repo")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
