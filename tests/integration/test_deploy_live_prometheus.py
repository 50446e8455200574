"""The deploy files against a real Prometheus scraping a real front end and audit worker.

The front end is started as compose and Kubernetes start it, pointed at the worker's audit store,
so its Audits page and API show the worker's runs.

`medrobust serve` and `medrobust audit worker --now` run as processes on the tiny repository;
Debian's `prometheus` scrapes them with deploy/prometheus/prometheus.yml (targets rewritten for
127.0.0.1, 1 s scrapes) and evaluates deploy/prometheus/alerts.yml. Once the audit's figures have
been scraped and a few predictions made, every Grafana panel query, every variable query and every
alert expression goes through Prometheus's HTTP API: each must evaluate, every robustness panel
must return series with the labels its legend and transformations use, and the service panels
that the predictions feed must return finite figures.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import deploy_queries as dq
from tests.integration import service_images as images
from tests.integration.serving import free_port, http

PROMETHEUS = Path("/usr/bin/prometheus")
EPSILONS = ("0", "0.01", "0.04")  # 0.01 is the dashboards' and alerts' reference epsilon
PREDICTIONS_PER_MODEL = 3
# Each wait has its own bound; together they keep the module well inside the timeout below on a
# loaded 2-core machine (TensorFlow's import and the first SavedModel load dominate).
STARTUP_SECONDS = 240
AUDIT_SECONDS = 300
SCRAPE_SECONDS = 30

pytestmark = [
    pytest.mark.system,
    pytest.mark.prometheus,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not PROMETHEUS.is_file(), reason=f"{PROMETHEUS} absent (Debian package prometheus; .ci/run installs it)"),
]

# Service queries with nothing to show in this stack, because the failures they count do not
# happen here (nor do TF Serving's metrics: none is started). They must still evaluate.
EMPTY_HERE = {
    ("service.json", "Error rate", "B"),  # 5xx
    ("service.json", "Backend errors by code", "A"),
}


ADMIN_TOKEN = "live-stack-admin-token"


class Processes:
    """Child processes in their own sessions, with logs in one folder; `stop_all` ends every one."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started[name] = process
        return process

    def log(self, name: str, tail: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-tail:]

    def check_alive(self) -> None:
        for name, process in self.started.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with status {process.returncode}:\n{self.log(name)}")

    def stop_all(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _wait_for(what: str, check: Callable[[], bool], seconds: float, processes: Processes, logs: tuple[str, ...]) -> None:
    """Poll `check` (connection errors count as "not yet") until it holds; fail with the logs after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}\n" + "\n".join(f"--- {n}:\n{processes.log(n)}" for n in logs))


@dataclass(frozen=True)
class Stack:
    prometheus: str  # "http://127.0.0.1:PORT"
    frontend: str    # "127.0.0.1:PORT" of the API
    frontend_metrics: str  # "127.0.0.1:PORT" of its /metrics
    audit: str

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/<path> (a failed query is returned, not raised: the caller asserts on it)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http(f"{self.prometheus}/api/v1/{path}{query}", timeout=30)
        document = json.loads(body)
        assert status in (200, 400, 422), f"/api/v1/{path} answered {status}: {body[:500]!r}"
        return document

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def scalar(self, expr: str) -> float:
        """The value of a one-series expression, NaN when it has no series yet."""
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else math.nan


@pytest.fixture(scope="module")
def stack(tiny_repo, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("live-prometheus")
    processes = Processes(tmp)
    frontend = f"127.0.0.1:{free_port()}"
    frontend_metrics = f"127.0.0.1:{free_port()}"  # /metrics has a port of its own, as deployed
    audit = f"127.0.0.1:{free_port()}"
    prometheus = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDROBUST_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # The serving and audit processes read the tiny repository; neither writes into it.
    medrobust = [sys.executable, "-m", "medrobust"]
    database = f"sqlite:///{tmp / 'audits.sqlite'}"
    try:
        processes.start("serve", [
            *medrobust, "serve", "--model-repo", str(tiny_repo.path), "--host", "127.0.0.1",
            "--port", frontend.rsplit(":", 1)[1], "--metrics-port", frontend_metrics.rsplit(":", 1)[1],
            "--workers", "1", "--threads", "2", "--database-url", database,
        ], env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / "serve-metrics"), "MEDROBUST_ADMIN_TOKEN": ADMIN_TOKEN,
                "MEDROBUST_AUDIT_ARTEFACTS": str(tmp / "frontend-artefacts")}, cwd=tmp)
        processes.start("audit", [
            *medrobust, "audit", "worker", "--model-repo", str(tiny_repo.path), "--dataset", tiny_repo.dataset_spec,
            "--metrics-port", audit.rsplit(":", 1)[1], "--now", "--samples", "8", "--epsilons", *EPSILONS,
            "--steps", "2", "--queries", "20", "--batch-size", "8", "--database-url", database,
            "--artefacts-dir", str(tmp / "artefacts"), "--no-progress",
        ], env={**env, "MEDROBUST_AUDIT_METRICS_HOST": "127.0.0.1"}, cwd=tmp)
        config = dq.local_prometheus_config(frontend=frontend_metrics, audit=audit, tf_serving=None, scrape_interval="1s")
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        processes.start("prometheus", [
            str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address={prometheus}", "--log.level=warn",
        ], env=env, cwd=tmp)
        live = Stack(f"http://{prometheus}", frontend, frontend_metrics, audit)

        _wait_for("Prometheus to be ready", lambda: http(f"{live.prometheus}/-/ready")[0] == 200,
                  STARTUP_SECONDS, processes, ("prometheus",))
        _wait_for("the front end to be scraped", lambda: live.scalar('up{job="medrobust-frontend"}') == 1,
                  STARTUP_SECONDS, processes, ("serve", "prometheus"))
        # Both models' figures (one series per model and epsilon) scraped: the audit has finished.
        expected = len(tiny_repo.models) * len(EPSILONS)
        _wait_for(f"{expected} medrobust_audit_robust_accuracy series in Prometheus",
                  lambda: live.scalar("count(medrobust_audit_robust_accuracy)") >= expected,
                  AUDIT_SECONDS, processes, ("audit", "prometheus"))

        # Predictions now, so they fall inside the dashboards' 1m rate windows when the queries run.
        # rate() ignores a series' first sample, and these labelled series are born at their first
        # increment: round one creates them (and loads the models), round two is what the panels show.
        made = 0
        for round_, seeds in enumerate((range(1), range(1, PREDICTIONS_PER_MODEL)), start=1):
            _predict_round(frontend, tiny_repo, seeds=seeds)
            made += len(tiny_repo.models) * len(seeds)
            _wait_for(f"round {round_} of requests to be scraped",
                      lambda made=made, round_=round_: live.scalar("sum(medrobust_predictions_total)") >= made
                      and live.scalar('sum(medrobust_http_requests_total{status="400"})') >= round_,
                      SCRAPE_SECONDS, processes, ("serve", "prometheus"))
        time.sleep(3)  # a few more scrapes and rule evaluations over the final values
        processes.check_alive()
        yield live
    finally:
        processes.stop_all()


def _predict_round(frontend: str, tiny_repo, *, seeds: range) -> None:
    """A PNG of the model's input size per model and seed, and one upload that is not an image (a 400)."""
    for model in tiny_repo.models:
        for seed in seeds:
            status, body = http(
                f"http://{frontend}/api/v1/models/{model}/predict",
                data=images.png(tiny_repo.image_size, tiny_repo.image_size, seed=seed), content_type="image/png", timeout=120,
            )
            assert status == 200, body[:500]
    status, body = http(f"http://{frontend}/api/v1/models/{tiny_repo.baseline}/predict",
                         data=b"not an image", content_type="image/png", timeout=60)
    assert status == 400, body[:500]  # so the 4xx error-rate query has data too


def _labels_missing(query_result: list[dict], required: frozenset[str]) -> list[dict]:
    return [series["metric"] for series in query_result if not required <= set(series["metric"])]


def test_front_end_and_audit_worker_are_scraped(stack) -> None:
    targets = stack.api("targets")["data"]["activeTargets"]
    health = {(t["labels"]["job"], t["labels"]["instance"]): (t["health"], t["lastError"]) for t in targets}
    assert health == {
        ("medrobust-frontend", stack.frontend_metrics): ("up", ""),
        ("medrobust-audit", stack.audit): ("up", ""),
    }


def test_the_front_ends_own_metrics_carry_the_audits_figures(stack, tiny_repo) -> None:
    """`serve --database-url` reads the figures from the store at each scrape (its gunicorn master does),
    so it exports them with no worker to ask; compose's Prometheus keeps the worker's copy only."""
    status, body = http(f"http://{stack.frontend_metrics}/metrics")
    assert status == 200
    for model in tiny_repo.models:
        assert b'medrobust_audit_robust_accuracy{' in body and f'model="{model}"'.encode() in body
        assert f'medrobust_audit_runs_total{{model="{model}",status="succeeded"}}'.encode() in body
    scraped = stack.query('count by (job) (medrobust_audit_robust_accuracy)')["data"]["result"]
    assert {series["metric"]["job"] for series in scraped} == {"medrobust-audit"}


def test_the_front_end_shows_the_audit_workers_runs(stack, tiny_repo) -> None:
    base = f"http://{stack.frontend}"
    status, body = http(f"{base}/api/v1/audits")
    assert status == 200, body[:500]
    runs = json.loads(body)["audits"]
    assert {r["model"] for r in runs if r["status"] == "succeeded"} == set(tiny_repo.models)
    status, page = http(f"{base}/audits")
    assert status == 200 and tiny_repo.baseline.encode() in page
    assert b"<th>worst class [95%]</th>" in page and b"<th>robust accuracy [95%]</th>" in page
    run = next(r for r in runs if r["status"] == "succeeded")
    status, figure = http(f"{base}/audits/{run['id']}/accuracy.png", timeout=120)  # drawn by the front end
    assert status == 200 and figure.startswith(b"\x89PNG"), figure[:200]
    # Runs are the worker's to start: this front end has no runner.
    status, body = http(f"{base}/api/v1/audits", data=json.dumps({"model": tiny_repo.baseline}).encode(),
                         content_type="application/json", token=ADMIN_TOKEN)
    assert status == 503 and json.loads(body)["error"]["code"] == "audits_unavailable"


def test_every_alert_rule_is_loaded_and_healthy(stack) -> None:
    groups = stack.api("rules")["data"]["groups"]
    loaded = {rule["name"]: (rule["health"], rule.get("lastError", "")) for group in groups for rule in group["rules"]}
    expected = {a.name for a in dq.alert_expressions()}
    assert set(loaded) == expected
    unhealthy = {name: state for name, state in loaded.items() if state[0] != "ok"}
    assert not unhealthy, f"rules not evaluating cleanly: {unhealthy}"


def test_every_alert_expression_evaluates(stack) -> None:
    failures = {}
    for alert in dq.alert_expressions():
        document = stack.query(alert.expr)
        if document["status"] != "success":
            failures[alert.name] = document.get("error")
    assert not failures, failures


def test_every_variable_query_returns_its_label(stack, tiny_repo) -> None:
    values: dict[tuple[str, str], set[str]] = {}
    for dashboard, variable, selector in dq.variable_queries():
        document = stack.query(selector)
        assert document["status"] == "success", (dashboard, variable, selector, document.get("error"))
        values[(dashboard, variable)] = {series["metric"].get(variable) for series in document["data"]["result"]}
    wanted = {"task": {tiny_repo.task}, "model": set(tiny_repo.models), "epsilon": set(EPSILONS)}  # the grid audited
    for (dashboard, variable), found in values.items():
        assert found == wanted[variable], f"{dashboard} ${variable}: {found}"


def _degenerate_models(stack) -> set[str]:
    return {s["metric"]["model"] for s in stack.query("medrobust_audit_degenerate == 1")["data"]["result"]}


def test_every_dashboard_query_evaluates_and_has_its_series(stack, tiny_repo) -> None:
    problems = []
    queries = dq.dashboard_queries()
    # A tiny model may well answer one class: the panels that leave degenerate models out (and the
    # attention gain, never paired with one) must then show exactly the others.
    degenerate = _degenerate_models(stack)
    for q in queries:
        where = f"{q.dashboard} / {q.panel} / {q.ref_id}: {q.expr}"
        document = stack.query(q.expr)
        if document["status"] != "success":
            problems.append(f"{where}: {document.get('error')}")
            continue
        result = document["data"]["result"]
        missing = _labels_missing(result, q.required_labels)
        if missing:
            problems.append(f"{where}: series without {sorted(q.required_labels)}: {missing[:3]}")
        reads_tf_serving = any(m.startswith(":tensorflow:") for m in q.metrics)
        if reads_tf_serving or (q.dashboard, q.panel, q.ref_id) in EMPTY_HERE:
            continue
        expected = set(tiny_repo.models)
        if "medrobust_audit_degenerate == 1" in q.expr:
            expected -= degenerate
        if "medrobust_audit_attention_gain" in q.metrics and degenerate:
            expected = set()
        if not expected:
            if result:
                problems.append(f"{where}: expected no series (degenerate: {sorted(degenerate)}), got {result[:3]}")
            continue
        # Audit figures may well be 0 (a tiny model's robust accuracy); the service's rates may not.
        shown = [s for s in result if math.isfinite(v := float(s["value"][1])) and (q.is_audit or v > 0)]
        if not shown:
            problems.append(f"{where}: no series with a {'finite' if q.is_audit else 'positive'} value (got {result[:3]})")
        elif q.is_audit and "model" in q.required_labels:
            models = {s["metric"]["model"] for s in result}
            if models != expected:
                problems.append(f"{where}: models {sorted(models)}, expected {sorted(expected)}")
    assert not problems, "\n".join(problems)
    assert sum(q.is_audit for q in queries) >= 10


def test_robust_accuracy_series_carry_every_label(stack, tiny_repo) -> None:
    """The metric itself, as the alerts and dashboards select it: one series per model and epsilon."""
    result = stack.query("medrobust_audit_robust_accuracy")["data"]["result"]
    labels = dq.METRIC_LABELS["medrobust_audit_robust_accuracy"]
    assert all(labels <= set(s["metric"]) for s in result), result
    assert {(s["metric"]["model"], s["metric"]["epsilon"]) for s in result} == {(m, e) for m in tiny_repo.models for e in EPSILONS}
    assert {s["metric"]["attention"] for s in result} == {"true", "false"}
    assert {s["metric"]["attack"] for s in result} == {"linf_pgd"}
    assert all(0.0 <= float(s["value"][1]) <= 1.0 for s in result)


def _by_series(stack, metric: str) -> dict[tuple[str, ...], float]:
    """{(model, epsilon[, class]): value} of one per-epsilon metric, checking every series' labels."""
    found = {}
    for series in stack.query(metric)["data"]["result"]:
        labels = series["metric"]
        assert dq.METRIC_LABELS[metric] <= set(labels), (metric, labels)
        key = (labels["model"], labels["epsilon"]) + ((labels["class"],) if "class" in labels else ())
        found[key] = float(series["value"][1])
    return found


def test_the_figures_beside_the_mean_are_exported_and_agree(stack, tiny_repo) -> None:
    """Worst class, balanced, Wilson bound, per class, audit-set size and the degenerate flag, as scraped."""
    grid = {(m, e) for m in tiny_repo.models for e in EPSILONS}
    mean = _by_series(stack, "medrobust_audit_robust_accuracy")
    worst = _by_series(stack, "medrobust_audit_worst_class_robust_accuracy")
    balanced = _by_series(stack, "medrobust_audit_balanced_robust_accuracy")
    lower = _by_series(stack, "medrobust_audit_robust_accuracy_lower")
    per_class = _by_series(stack, "medrobust_audit_class_robust_accuracy")
    worst_lower = _by_series(stack, "medrobust_audit_worst_class_robust_accuracy_lower")
    balanced_lower = _by_series(stack, "medrobust_audit_balanced_robust_accuracy_lower")
    class_lower = _by_series(stack, "medrobust_audit_class_robust_accuracy_lower")
    assert set(mean) == set(worst) == set(balanced) == set(lower) == set(worst_lower) == set(balanced_lower) == grid
    assert set(class_lower) == set(per_class)
    for key in grid:
        classes = [v for k, v in per_class.items() if k[:2] == key]
        assert len(classes) >= 2, key  # the audit set is class-stratified
        assert worst[key] == pytest.approx(min(classes)) and balanced[key] == pytest.approx(sum(classes) / len(classes))
        assert worst[key] <= balanced[key] and lower[key] <= mean[key]
        assert worst_lower[key] <= worst[key] and balanced_lower[key] <= balanced[key]
        # The worst class's bound is that class's own (the lowest figure's), among the classes' bounds.
        assert worst_lower[key] in [v for k, v in class_lower.items() if k[:2] == key]
    samples = stack.query("medrobust_audit_samples")["data"]["result"]
    assert {(s["metric"]["model"], float(s["value"][1])) for s in samples} == {(m, 8.0) for m in tiny_repo.models}
    degenerate = {s["metric"]["model"]: float(s["value"][1]) for s in stack.query("medrobust_audit_degenerate")["data"]["result"]}
    assert set(degenerate) == set(tiny_repo.models) and set(degenerate.values()) <= {0.0, 1.0}
    # The same flag the front end's API gives for each model's run.
    status, body = http(f"http://{stack.frontend}/api/v1/audits")
    assert status == 200
    runs = {r["model"]: r for r in json.loads(body)["audits"] if r["status"] == "succeeded"}
    assert {m: float(r["degenerate"]) for m, r in runs.items()} == degenerate
    sanity = stack.query("medrobust_audit_sanity_check_failed")["data"]["result"]
    assert sanity and all({"version", "attack", "check"} <= set(s["metric"]) for s in sanity)
