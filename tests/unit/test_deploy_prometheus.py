"""deploy/prometheus read as files: every alert is documented, tested firing then clearing, and agrees
with the compose stack, the Kubernetes schedules and the audit's thresholds.

promtool's own checks of these files run in tests/integration/test_deploy_prometheus.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_TESTS = ("alerts_test.yml", "alerts_test_days.yml")
# The alerts issue 5 asks for, plus scrape-target health and the degenerate model.
EXPECTED_ALERTS = {
    "MedrobustRobustAccuracyBelowThreshold",
    "MedrobustDegenerateModel",
    "MedrobustModelNotAudited",
    "MedrobustRobustAccuracyRegression",
    "MedrobustAuditStale",
    "MedrobustAuditFailing",
    "MedrobustGradientMaskingSuspected",
    "MedrobustFrontendErrorRateHigh",
    "MedrobustFrontendLatencyHigh",
    "MedrobustTargetDown",
}
PAPER_EPSILONS = {"0", "0.00125", "0.0025", "0.005", "0.01", "0.02", "0.04", "0.08", "0.16", "0.32"}


def _rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_is_documented() -> None:
    names = [rule["alert"] for rule in _rules()]
    assert sorted(names) == sorted(EXPECTED_ALERTS)
    for rule in _rules():
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("runbook"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
    readme = (ROOT / "deploy" / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme, f"deploy/README.md does not explain {name}"


def test_every_alert_is_tested_firing_and_then_clear() -> None:
    """promtool passes a file that never fires an alert; so check each alert fires and later clears."""
    timeline: dict[str, list[tuple[str, int, bool]]] = {}
    for name in RULE_TESTS:
        for group in yaml.safe_load((PROMETHEUS / name).read_text())["tests"]:
            for case in group["alert_rule_test"]:
                firing = bool(case["exp_alerts"])
                timeline.setdefault(case["alertname"], []).append((group["name"], _minutes(case["eval_time"]), firing))
    assert set(timeline) == EXPECTED_ALERTS
    for alert, cases in timeline.items():
        cleared_after_firing = any(
            not firing and group == g and time > t
            for group, time, firing in cases
            for g, t, f in cases
            if f
        )
        assert cleared_after_firing, f"{alert}: needs a test where it fires and a later one where it clears"


def _minutes(duration: str) -> int:
    units = {"m": 1, "h": 60, "d": 1440}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([mhd])", duration))


def test_robust_accuracy_floors_are_per_task_at_a_paper_epsilon() -> None:
    rule = next(r for r in _rules() if r["alert"] == "MedrobustRobustAccuracyBelowThreshold")
    # The worst class: a one-class model keeps its class's share of the plain mean at every epsilon.
    assert "medrobust_audit_robust_accuracy{" not in rule["expr"]
    matchers = re.findall(r'medrobust_audit_worst_class_robust_accuracy\{([^}]*)\}\s*<\s*([0-9.]+)', rule["expr"])
    assert len(matchers) == 4
    tasks = {}
    for labels, floor in matchers:
        found = {(key, op): value for key, op, value in re.findall(r'(\w+)(=~|!~|=)"([^"]*)"', labels)}
        assert found[("attack", "=")] == "linf_pgd" and found[("epsilon", "=")] in PAPER_EPSILONS
        tasks[found.get(("task", "="), "default")] = float(floor)
        assert 0 < float(floor) < 1
    assert set(tasks) == {"derm", "dr", "pneumothorax", "default"}


def test_audit_staleness_is_twice_the_daily_schedule() -> None:
    """MedrobustAuditStale hard-codes two days; every audit schedule in deploy/ must be daily."""
    rule = next(r for r in _rules() if r["alert"] == "MedrobustAuditStale")
    assert "> 2 * 86400" in rule["expr"] and "[2d]" in rule["expr"] and "offset 2d" in rule["expr"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    schedules = [compose["services"]["audit-worker"]["environment"]["MEDROBUST_AUDIT_SCHEDULE"]]
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CronJob":
                schedules.append(doc["spec"]["schedule"])
            if doc and doc.get("kind") == "ConfigMap" and "MEDROBUST_AUDIT_SCHEDULE" in doc.get("data", {}):
                schedules.append(doc["data"]["MEDROBUST_AUDIT_SCHEDULE"])  # the audit workers' (envFrom)
    assert len(schedules) >= 2
    for schedule in schedules:
        minute, hour, *rest = schedule.split()
        assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"], f"not daily: {schedule!r}"


def test_scrape_targets_match_the_compose_services() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets == {
        "medrobust-frontend": ["frontend:9102"],  # the metrics port, not the API's
        "medrobust-audit": ["audit-worker:9101"],
        "tf-serving": ["tf-serving:8501"],
    }
    assert jobs["medrobust-frontend"]["metrics_path"] == jobs["medrobust-audit"]["metrics_path"] == "/metrics"
    services = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    for target in (t for ts in targets.values() for t in ts):
        assert target.split(":")[0] in services, target
    frontend = services["frontend"]
    assert "--metrics-port=9102" in frontend["command"] and "ports" not in frontend, "the metrics port is not published"
    # The alert on scrape health names exactly these jobs.
    down = next(r for r in _rules() if r["alert"] == "MedrobustTargetDown")
    assert set(re.search(r'job=~"([^"]+)"', down["expr"]).group(1).split("|")) == set(jobs)


def test_the_regression_is_judged_against_the_previous_versions_interval() -> None:
    rule = next(r for r in _rules() if r["alert"] == "MedrobustRobustAccuracyRegression")
    assert "medrobust_audit_robust_accuracy_lower{" in rule["expr"] and "offset 7d" in rule["expr"]
    assert not re.search(r"-\s*0\.\d", rule["expr"]), "a fixed margin instead of the interval"


def test_the_degenerate_alert_matches_the_audits_threshold() -> None:
    from audit.results import DEGENERATE_SHARE

    rule = next(r for r in _rules() if r["alert"] == "MedrobustDegenerateModel")
    assert rule["expr"].strip() == "medrobust_audit_degenerate == 1"
    assert f"at least {DEGENERATE_SHARE:.0%} of its audit set (each class weighted equally)" in rule["annotations"]["summary"]
    masking = next(r for r in _rules() if r["alert"] == "MedrobustGradientMaskingSuspected")
    assert 'check!="degenerate_predictions"' in masking["expr"]
