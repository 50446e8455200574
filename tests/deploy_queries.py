"""Every PromQL query the deploy files hold, ready to run against a real Prometheus.

Used by the deploy tests (promtool parses each one) and by the integration test that scrapes a
running front end and audit worker and sends each query to Prometheus's HTTP API:

    for q in dashboard_queries():
        requests.get(f"{prom}/api/v1/query", params={"query": q.expr})   # q.required_labels on every series
    for a in alert_expressions():
        ...                                                             # a.expr parses and evaluates

Grafana variables are substituted with values that select everything a test stack exports
(`$task`/`$model` -> ".*", `$attack` -> "linf_pgd", `$epsilon` -> "0.01").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Regex-friendly values for the dashboards' variables (multi-value ones are used with =~).
DEFAULT_VARIABLES: Mapping[str, str] = {
    "task": ".*",
    "model": ".*",
    "attack": "linf_pgd",
    "epsilon": "0.01",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

_MODEL = frozenset({"task", "model", "backbone", "attention", "version"})
_POINT = _MODEL | {"attack", "epsilon"}
# The metrics the serving and audit issues fix, with their labels (histograms: the base name).
METRIC_LABELS: Mapping[str, frozenset[str]] = {
    "medrobust_http_requests_total": frozenset({"endpoint", "method", "status"}),
    "medrobust_http_request_duration_seconds": frozenset({"endpoint"}),
    "medrobust_predictions_total": frozenset({"model", "label"}),
    "medrobust_backend_request_duration_seconds": frozenset({"backend", "signature"}),
    "medrobust_backend_errors_total": frozenset({"backend", "code"}),
    "medrobust_models_loaded": frozenset(),
    "medrobust_audit_robust_accuracy": _POINT,
    "medrobust_audit_balanced_robust_accuracy": _POINT,
    "medrobust_audit_worst_class_robust_accuracy": _POINT,
    "medrobust_audit_robust_accuracy_lower": _POINT,
    "medrobust_audit_worst_class_robust_accuracy_lower": _POINT,
    "medrobust_audit_balanced_robust_accuracy_lower": _POINT,
    "medrobust_audit_class_robust_accuracy": _POINT | {"class"},
    "medrobust_audit_class_robust_accuracy_lower": _POINT | {"class"},
    "medrobust_audit_clean_accuracy": _MODEL,
    "medrobust_audit_budget_info": frozenset({"task", "model", "version", "attack", "budget"}),
    "medrobust_audit_balanced_clean_accuracy": _MODEL,
    "medrobust_audit_clean_accuracy_lower": _MODEL,
    "medrobust_audit_balanced_clean_accuracy_lower": _MODEL,
    "medrobust_audit_robustness_score": _MODEL | {"attack"},
    "medrobust_audit_samples": frozenset({"task", "model", "version", "attack"}),
    "medrobust_audit_degenerate": frozenset({"task", "model", "version"}),
    "medrobust_audit_attention_gain": frozenset({"task", "backbone", "attack", "epsilon"}),
    "medrobust_audit_runs_total": frozenset({"model", "status"}),
    "medrobust_audit_duration_seconds": frozenset({"model"}),
    "medrobust_audit_last_success_timestamp_seconds": frozenset({"model"}),
    "medrobust_audit_sanity_check_failed": frozenset({"model", "version", "attack", "check"}),
    "medrobust_audit_unauditable": frozenset({"model", "task"}),
    "medrobust_audit_jobs_queued": frozenset(),
    "medrobust_audit_jobs_running": frozenset(),
    "medrobust_audit_jobs_failed": frozenset(),
    "medrobust_audit_oldest_queued_job_age_seconds": frozenset(),
    "medrobust_audit_progress_ratio": frozenset({"model", "version", "attack"}),
}
AUDIT_METRICS = frozenset(name for name in METRIC_LABELS if name.startswith("medrobust_audit_"))
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_METRIC = re.compile(r"(?<![\w:])(medrobust_\w+|:tensorflow:[\w:]+)")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one Grafana panel."""

    dashboard: str          # file name, e.g. "robustness.json"
    panel: str              # panel title (variables left as written)
    ref_id: str
    raw_expr: str           # as written in the dashboard
    expr: str               # variables substituted: ready for Prometheus
    instant: bool
    required_labels: frozenset[str]   # labels every result series must carry (legend, transformations)

    @property
    def metrics(self) -> frozenset[str]:
        return metric_names(self.raw_expr)

    @property
    def is_audit(self) -> bool:
        """A robustness query: it must return series once an audit has run."""
        return bool(self.metrics & AUDIT_METRICS)


@dataclass(frozen=True)
class AlertExpression:
    name: str
    expr: str
    group: str


def substitute(expr: str, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """Replace Grafana's `$var`, `${var}`, `${var:fmt}` and `[[var]]`; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> frozenset[str]:
    """Metric names an expression reads, histogram suffixes removed for medrobust metrics."""
    names = set()
    for name in _METRIC.findall(expr):
        if name.startswith("medrobust_") and name not in METRIC_LABELS:
            name = re.sub(r"_(bucket|count|sum)$", "", name)
        names.add(name)
    return frozenset(names)


def dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, dict]:
    """Every committed dashboard, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    """Every non-row panel, including those nested in collapsed rows."""
    found = []
    for item in dashboard["panels"]:
        if item["type"] == "row":
            found.extend(item.get("panels", []))
        else:
            found.append(item)
    return found


def dashboard_queries(directory: Path = DASHBOARDS_DIR, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> list[PanelQuery]:
    """Every panel target of every dashboard, variables substituted."""
    queries = []
    for name, dashboard in dashboards(directory).items():
        for panel in panels(dashboard):
            fields = {
                value
                for transformation in panel.get("transformations", [])
                for key, value in transformation.get("options", {}).items()
                if key in {"rowField", "columnField"}
            }
            for target in panel["targets"]:
                queries.append(PanelQuery(
                    dashboard=name,
                    panel=panel["title"],
                    ref_id=target["refId"],
                    raw_expr=target["expr"],
                    expr=substitute(target["expr"], variables),
                    instant=bool(target.get("instant")),
                    required_labels=frozenset(_LEGEND_LABEL.findall(target.get("legendFormat", ""))) | fields,
                ))
    return queries


def variable_queries(directory: Path = DASHBOARDS_DIR, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> list[tuple[str, str, str]]:
    """(dashboard, variable, series selector) for every `label_values(selector, label)` variable."""
    found = []
    for name, dashboard in dashboards(directory).items():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
                assert match, f"{name}: variable {variable['name']} is not label_values(selector, label)"
                found.append((name, variable["name"], substitute(match.group(1), variables)))
    return found


def alert_expressions(path: Path = ALERTS_FILE) -> list[AlertExpression]:
    """Every alerting (and recording) rule's expression."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [
        AlertExpression(name=rule.get("alert") or rule["record"], expr=rule["expr"].strip(), group=group["name"])
        for group in groups
        for rule in group["rules"]
    ]


def local_prometheus_config(*, frontend: str, audit: str, tf_serving: str | None = None,
                            scrape_interval: str = "1s", rules: Path = ALERTS_FILE) -> dict:
    """deploy/prometheus/prometheus.yml with its targets replaced (e.g. "127.0.0.1:18000").

    Jobs keep their names and metrics paths, so alert expressions and dashboards work unchanged;
    the TF Serving job is dropped when no `tf_serving` address is given.
    """
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str(rules)]
    targets = {"medrobust-frontend": frontend, "medrobust-audit": audit, "tf-serving": tf_serving}
    jobs = []
    for job in config["scrape_configs"]:
        target = targets[job["job_name"]]
        if target is not None:
            job["static_configs"] = [{"targets": [target]}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    return config
