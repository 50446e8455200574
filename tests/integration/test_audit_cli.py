"""`medrobust audit run --json`, `medrobust audit report`, and `medrobust up` on an existing repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medrobust.cli import main
from tests.integration.serving import free_port


@pytest.mark.slow  # a whole audit and its report through the command: ~25 s
def test_audit_run_json_then_report(tiny_repo, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    code = main([
        "audit", "run", "--model-repo", str(tiny_repo.path), "--dataset", tiny_repo.dataset_spec, "--samples", "6",
        "--epsilons", "0", "0.005", "0.02", "--steps", "2", "--database-url", url, "--artefacts-dir", str(tmp_path / "art"),
        "--no-progress", "--json",
    ])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in doc["runs"]] == sorted(tiny_repo.models)
    run = doc["runs"][0]
    assert run["status"] == "succeeded" and run["version"] == 1 and run["backend"] == "embedded"
    assert len(run["audit_set"]["sample_ids"]) == 6 and all(s.startswith("synthetic/") for s in run["audit_set"]["sample_ids"])
    assert [p["epsilon"] for p in run["points"]] == ["0", "0.005", "0.02"]
    assert {"robust_accuracy", "balanced_robust_accuracy", "per_class", "attacked", "fooled"} <= set(run["points"][0])
    assert run["points"][0]["robust_accuracy"] == run["clean_accuracy"]
    # Every run of a model attacks the same images.
    assert doc["runs"][0]["audit_set"]["fingerprint"] == doc["runs"][1]["audit_set"]["fingerprint"]

    assert main(["audit", "report", str(run["run_id"]), "--database-url", url]) == 0
    page = capsys.readouterr().out.strip()
    assert page.endswith("index.html") and os.path.isfile(page)
    folder = os.path.dirname(page)
    with open(os.path.join(folder, "accuracy.png"), "rb") as handle:
        assert handle.read(4) == b"\x89PNG"
    assert "Sanity checks" in Path(page).read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "nope-resnet50-baseline"], "expected models among the served ones"),
        (["--epsilons", "-1"], "expected a finite epsilon >= 0, got '-1'"),
    ],
)
def test_audit_run_usage_errors(tiny_repo, tmp_path, capsys, argv, message):
    code = main(["audit", "run", "--model-repo", str(tiny_repo.path), "--dataset", tiny_repo.dataset_spec,
                 "--database-url", f"sqlite:///{tmp_path / 'a.sqlite'}", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_audit_run_exits_non_zero_when_a_run_fails(tiny_repo, tmp_path, capsys):
    # The dataset cannot be read: the run is recorded as failed, and the exit status says so.
    code = main(["audit", "run", "--model-repo", str(tiny_repo.path), "--dataset", f"folder:{tmp_path / 'missing'}",
                 "--database-url", f"sqlite:///{tmp_path / 'a.sqlite'}", "--json", "--models", tiny_repo.baseline])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["status"] == "failed" and doc["runs"][0]["error"]


def test_up_on_an_existing_repository_serves_everything_and_stops_cleanly(copy_repo, tiny_repo, tmp_path):
    repo = copy_repo()
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MEDROBUST_ADMIN_TOKEN": "t"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medrobust", "up", "--model-repo", str(repo), "--dataset", tiny_repo.dataset_spec,
         "--port", str(port), "--metrics-port", str(metrics_port), "--no-audit",
         "--database-url", f"sqlite:///{tmp_path / 'a.sqlite'}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        out = "".join(lines)
        assert f"http://127.0.0.1:{port}/audits" in out and f"http://127.0.0.1:{metrics_port}/metrics" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/audits", timeout=30) as page:
            assert page.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=30) as health:
            assert json.load(health)["scheduler"] == "running"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as metrics:
            text = metrics.read().decode()
        # The front end's counts and the audit's figures on the metrics port, none on the API's.
        assert "medrobust_http_requests_total{" in text and "medrobust_audit_runs_total" in text
        with pytest.raises(urllib.error.HTTPError) as api_port:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30)
        api_port.value.close()
        assert api_port.value.code == 404
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-2000:]
    assert "stopping" in rest


def test_audit_run_against_tf_serving_refuses_a_model_it_does_not_serve(tiny_repo, tfserving_server, tmp_path, capsys,
                                                                       monkeypatch):
    """`--models` is what to audit: the served names still come from the repository, so the check fires."""
    monkeypatch.setenv("MEDROBUST_MODEL_REPO", str(tiny_repo.path))
    code = main(["audit", "run", "--tf-serving", tfserving_server, "--dataset", tiny_repo.dataset_spec,
                 "--database-url", f"sqlite:///{tmp_path / 'a.sqlite'}", "--models", "nope-resnet50-baseline"])
    assert code == 2
    err = capsys.readouterr().err
    assert "expected models among the served ones" in err and tiny_repo.baseline in err


def test_audit_enqueue_queues_each_job_once_and_run_says_when_the_split_caps_the_samples(tiny_repo, tmp_path, capsys, caplog):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    common = ["--model-repo", str(tiny_repo.path), "--dataset", tiny_repo.dataset_spec, "--database-url", url,
              "--samples", "500", "--epsilons", "0", "--steps", "1", "--models", tiny_repo.baseline]
    assert main(["audit", "enqueue", *common, "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)["jobs"]
    assert (job["model"], job["created"], job["status"]) == (tiny_repo.baseline, True, "queued")
    assert main(["audit", "enqueue", *common]) == 0
    assert capsys.readouterr().out.strip() == f"run {job['run_id']}: {tiny_repo.baseline} v1 linf_pgd: already queued"
    # `audit run` with the same settings carries out the queued job rather than queueing another.
    with caplog.at_level("WARNING", logger="audit.runner"):
        assert main(["audit", "run", *common, "--json", "--no-progress", "--artefacts-dir", str(tmp_path / "art")]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert (run["run_id"], run["status"]) == (job["run_id"], "succeeded")
    split = len(run["audit_set"]["sample_ids"])
    assert split < 500
    assert f"500 images asked, {split} in the test split of {tiny_repo.dataset_spec}" in caplog.text
