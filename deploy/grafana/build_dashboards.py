"""Generate the Grafana dashboards in dashboards/ from plain dicts.

    python deploy/grafana/build_dashboards.py          # rewrite dashboards/*.json
    python deploy/grafana/build_dashboards.py --check  # exit 1 if they are out of date

Edit this file, not the JSON; tests/unit/test_deploy_grafana.py fails when they differ.
Metric names are the ones fixed by the serving and audit issues. The attack variable lists the
attack registry (training/contract/attacks.py); the model and epsilon variables are Prometheus's
label values: no list of either is copied here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from a checkout: the registry is the project's
    sys.path.insert(0, str(ROOT))

from audit.metrics import metric_families  # noqa: E402  (needs the path above)
from training.contract.attacks import DEFAULT_ATTACK, attack_names  # noqa: E402

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
# The uid given to the datasource in provisioning/datasources/prometheus.yml.
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
DEFAULT_EPSILON = "0.01"  # the alerts' epsilon
# Requests that are not predictions: left out of error rates (as in the alert rules).
NOT_PREDICTIONS = 'endpoint!~".*(healthz|readyz|metrics).*"'


def query(expr: str, legend: str = "", *, instant: bool = False, table: bool = False, ref: str = "A") -> dict:
    """One Prometheus target."""
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "instant": instant,
        "range": not instant,
        "format": "table" if table else "time_series",
    }


def panel(kind: str, title: str, description: str, targets: list[dict], *, unit: str, width: int = 12,
          height: int = 8, min_value: float | None = None, max_value: float | None = None,
          options: dict | None = None, transformations: list[dict] | None = None,
          thresholds: list[tuple[str, float | None]] | None = None, mappings: list[dict] | None = None) -> dict:
    """A panel; `gridPos` x/y are filled in by `layout`."""
    defaults: dict = {"unit": unit}
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    if thresholds is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for color, value in thresholds],
        }
    if mappings is not None:
        defaults["mappings"] = mappings
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
        "transformations": transformations or [],
    }


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "panels": []}


def layout(items: list[dict]) -> list[dict]:
    """Place panels left to right, wrapping at Grafana's 24 columns; number them."""
    x = y = row_height = 0
    for number, item in enumerate(items, start=1):
        item["id"] = number
        pos = item["gridPos"]
        if item["type"] == "row" or x + pos["w"] > 24:
            x, y, row_height = 0, y + row_height, 0
        pos["x"], pos["y"] = x, y
        x += pos["w"]
        row_height = max(row_height, pos["h"])
        if item["type"] == "row":
            x, y, row_height = 0, y + pos["h"], 0
    return items


def query_variable(name: str, label: str, definition: str, *, default: str | None = None, sort: int = 1) -> dict:
    """Values from Prometheus (`label_values(...)`): every one ("All") unless a single `default` is given.

    `sort` is Grafana's: 1 alphabetical, 3 numerical (epsilons).
    """
    variable = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": definition,
        "query": {"query": definition, "refId": f"{name}-variable"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": sort,
    }
    if default is not None:
        variable.update(multi=False, includeAll=False, current={"selected": True, "text": default, "value": default})
        del variable["allValue"]
    return variable


def custom_variable(name: str, label: str, values: tuple[str, ...], default: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "multi": False,
        "includeAll": False,
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
    }


def dashboard(uid: str, title: str, description: str, variables: list[dict], panels: list[dict], *,
              time_from: str) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["medrobust"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "annotations": {"list": []},
        "links": [{"title": "medrobust", "type": "dashboards", "tags": ["medrobust"], "asDropdown": False}],
        "templating": {"list": variables},
        "panels": layout(panels),
    }


TASK = query_variable("task", "Task", "label_values(medrobust_audit_clean_accuracy, task)")


def epsilon_bars(expr: str, column: str, row_field: str = "epsilon") -> dict:
    """Bar-chart options for an instant table query: one group of bars per `row_field` (the epsilon)."""
    return {
        "transformations": [
            {"id": "groupingToMatrix", "options": {"rowField": row_field, "columnField": column, "valueField": "Value"}},
        ],
        "options": {
            "xField": f"{row_field}\\{column}", "orientation": "vertical",
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
        },
        "targets": [query(expr, instant=True, table=True)],
    }


def audit(metric: str, selector: str) -> str:
    """One audit series per label set, however many processes export it.

    Every worker replica and the front end read the same store and export the same figures; they
    differ only in the labels Prometheus adds (job, instance, pod). `max by` the metric's own
    labels, read off the collector, keeps one of each.
    """
    return f"max by ({', '.join(metric_families()[metric])}) ({metric}{{{selector}}})"


# A model version flagged degenerate (it answers one class): its plain figures measure that
# class's share, so rankings leave it out; the "Degenerate models" panel names it.
def not_degenerate(expr: str) -> str:
    return f"{expr} unless on (model, version) (medrobust_audit_degenerate == 1)"


DEGENERATE_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "ok", "color": "green"}, "1": {"text": "DEGENERATE", "color": "red"},
}}]


def robustness() -> dict:
    selector = 'task=~"$task", model=~"$model"'
    accuracy = dict(unit="percentunit", min_value=0, max_value=1)
    legend = "{{model}} v{{version}}"
    # A figure of a reduced budget says so by name: its series take the budget label of its run.
    budgeted = legend + " ({{budget}} budget)"
    budget_info = audit("medrobust_audit_budget_info", f'{selector}, attack="$attack"')

    def with_budget(expr: str) -> str:
        return f"({expr}) * on (model, version, attack) group_left (budget) {budget_info}"

    latest = epsilon_bars(audit("medrobust_audit_robust_accuracy", f'{selector}, attack="$attack"'), "model")
    worst = epsilon_bars(audit("medrobust_audit_worst_class_robust_accuracy", f'{selector}, attack="$attack"'), "model")
    per_class = epsilon_bars(
        audit("medrobust_audit_class_robust_accuracy", f'{selector}, attack="$attack", epsilon="$epsilon"'), "model",
        row_field="class",
    )
    gain_at = 'task=~"$task", attack="$attack", epsilon="$epsilon"'
    gain = epsilon_bars(audit("medrobust_audit_attention_gain", 'task=~"$task", attack="$attack"'), "backbone")
    score = audit("medrobust_audit_robustness_score", f'{selector}, attack="$attack"')
    at_epsilon = f'{selector}, attack="$attack", epsilon="$epsilon"'
    panels = [
        row("Latest audit"),
        panel("barchart", "Robust accuracy against epsilon (latest audit)",
              "Accuracy on the audit set under $attack at each epsilon of the paper's grid, per model (the mean over "
              "images), at the budget the robustness score panel names beside each model (\"standard\" or "
              "\"reduced (...)\"). A model that answers one class keeps that class's share here at every epsilon: read it beside "
              "the worst class and the degenerate flag.",
              latest["targets"], transformations=latest["transformations"], options=latest["options"], **accuracy),
        panel("barchart", "Worst-class robust accuracy against epsilon (latest audit)",
              "The lowest per-class robust accuracy under $attack: 0 for a model that gives up a class, however high "
              "its mean. The robustness floors (alert MedrobustRobustAccuracyBelowThreshold) read this figure.",
              worst["targets"], transformations=worst["transformations"], options=worst["options"], **accuracy),
        panel("barchart", "Robust accuracy per class at ε = $epsilon (latest audit)",
              "Each class's robust accuracy under $attack at the chosen epsilon, per model.",
              per_class["targets"], transformations=per_class["transformations"], options=per_class["options"], **accuracy),
        panel("barchart", "Attention gain: attentive minus baseline",
              "Robust accuracy of the attentive model minus the baseline of the same task and backbone "
              "(latest runs on the same audit set, steps and grid; none when either model is degenerate). "
              "Positive: attention helps, as the paper claims.",
              gain["targets"], transformations=gain["transformations"], options=gain["options"],
              unit="percentunit", thresholds=[("red", None), ("green", 0)]),
        panel("stat", "Degenerate models", "1 = the model version answers one class for at least 90% of its audit set, each true "
              "class weighted equally: "
              "it has not learned the task, and its robust accuracy is that class's share, not robustness. "
              "Alert MedrobustDegenerateModel.",
              [query(audit("medrobust_audit_degenerate", selector), legend, instant=True)],
              width=6, unit="none", thresholds=[("green", None), ("red", 1)], mappings=DEGENERATE_MAPPINGS),
        panel("bargauge", "Robustness score (latest audit, degenerate models left out)",
              "Mean robust accuracy over the non-zero epsilons of the grid under $attack (epsilon 0 is clean accuracy). "
              "Degenerate models are left out: a one-class model keeps its class's share at every epsilon and would "
              "rank as the most robust (see \"Degenerate models\").",
              [query(with_budget(not_degenerate(score)), budgeted, instant=True)],
              width=6, options={"orientation": "horizontal", "displayMode": "gradient"}, **accuracy),
        panel("bargauge", "Clean accuracy (latest audit)", "Accuracy on the unperturbed audit set, and its balanced "
              "figure (the mean over classes: 1/K for a one-class model).",
              [query(audit("medrobust_audit_clean_accuracy", selector), legend, instant=True),
               query(audit("medrobust_audit_balanced_clean_accuracy", selector), legend + " balanced", instant=True, ref="B")],
              width=6, options={"orientation": "horizontal", "displayMode": "gradient"}, **accuracy),
        panel("stat", "Attention gain at ε = $epsilon", "Attentive minus baseline robust accuracy at the chosen epsilon.",
              [query(audit("medrobust_audit_attention_gain", gain_at), "{{task}} {{backbone}}", instant=True)],
              width=6, unit="percentunit", thresholds=[("red", None), ("green", 0)]),
        row("Across versions"),
        panel("timeseries", "Robust accuracy at ε = $epsilon over time, by version",
              "One line per model version: the mean, the lower bound of its 95% Wilson interval, the worst class and "
              "the lower bound of the worst class's own 95% Wilson interval (over that class's images only). "
              "Alert MedrobustRobustAccuracyRegression fires when a new version's mean falls below the previous "
              "version's lower bound.",
              [query(with_budget(audit("medrobust_audit_robust_accuracy", at_epsilon)), budgeted),
               query(with_budget(audit("medrobust_audit_robust_accuracy_lower", at_epsilon)), budgeted + " 95% lower bound",
                     ref="B"),
               query(with_budget(audit("medrobust_audit_worst_class_robust_accuracy", at_epsilon)),
                     budgeted + " worst class", ref="C"),
               query(with_budget(audit("medrobust_audit_worst_class_robust_accuracy_lower", at_epsilon)),
                     budgeted + " worst class 95% lower bound", ref="D")],
              **accuracy),
        panel("timeseries", "Clean accuracy over time, by version", "Clean accuracy of every audited version.",
              [query(audit("medrobust_audit_clean_accuracy", selector), legend)], **accuracy),
        panel("timeseries", "Robustness score over time, by version (degenerate models left out)",
              "Mean robust accuracy over the grid's non-zero epsilons under $attack.",
              [query(with_budget(not_degenerate(score)), budgeted)], **accuracy),
        panel("timeseries", "Attention gain at ε = $epsilon over time", "Attentive minus baseline, per task and backbone.",
              [query(audit("medrobust_audit_attention_gain", gain_at), "{{task}} {{backbone}}")],
              unit="percentunit"),
        row("Audit health"),
        panel("stat", "Time since last successful audit",
              "Alert MedrobustAuditStale fires at two days (twice the daily schedule).",
              [query('time() - max by (model) (medrobust_audit_last_success_timestamp_seconds{model=~"$model"})', "{{model}}", instant=True)],
              width=6, unit="s", thresholds=[("green", None), ("orange", 86400 * 1.5), ("red", 86400 * 2)]),
        # Each exporting process counts the same stored runs: the largest increase, not their sum.
        panel("bargauge", "Audit runs in the last 24 h", "Successful and failed runs per model.",
              [query('max by (model, status) (increase(medrobust_audit_runs_total{model=~"$model"}[24h]))', "{{model}} {{status}}", instant=True)],
              width=6, unit="short", min_value=0, options={"orientation": "horizontal", "displayMode": "basic"}),
        panel("bargauge", "Last audit duration", "Wall time of each model's last audit run.",
              [query(audit("medrobust_audit_duration_seconds", 'model=~"$model"'), "{{model}}", instant=True)],
              width=6, unit="s", min_value=0, options={"orientation": "horizontal", "displayMode": "basic"}),
        panel("stat", "Audit set size", "Images the figures are counted over: at 128, one image is 0.008 of accuracy "
              "and the 95% interval is about ±0.08.",
              [query(audit("medrobust_audit_samples", f'{selector}, attack="$attack"'), legend, instant=True)],
              width=6, unit="short"),
        panel("stat", "Sanity checks", "1 = the check failed in the latest run of the version under the attack: the "
              "robust accuracy may be overstated (gradient masking suspected). Alert MedrobustGradientMaskingSuspected.",
              [query('max by (model, version, attack, check) (medrobust_audit_sanity_check_failed{model=~"$model"})',
                     "{{model}} v{{version}} {{attack}} {{check}}", instant=True)],
              width=24, unit="none", thresholds=[("green", None), ("red", 1)],
              mappings=[{"type": "value", "options": {"0": {"text": "ok", "color": "green"}, "1": {"text": "FAILED", "color": "red"}}}]),
    ]
    variables = [
        TASK,
        query_variable("model", "Model", 'label_values(medrobust_audit_clean_accuracy{task=~"$task"}, model)'),
        custom_variable("attack", "Attack", attack_names(), DEFAULT_ATTACK),
        query_variable(
            "epsilon", "Epsilon", 'label_values(medrobust_audit_robust_accuracy{attack="$attack"}, epsilon)',
            default=DEFAULT_EPSILON, sort=3,
        ),
    ]
    return dashboard("medrobust-robustness", "medrobust: Robustness",
                     "Adversarial robustness of the served models, from the scheduled audits.",
                     variables, panels, time_from="now-30d")


def service() -> dict:
    rate = "$__rate_interval"

    def quantiles(metric: str, by: str, legend: str, selector: str = "") -> list[dict]:
        return [
            query(f"histogram_quantile({q}, sum by ({by}le) (rate({metric}{selector}[{rate}])))", f"p{int(q * 100)} {legend}".strip(), ref=ref)
            for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
        ]

    tf_model = '{model_name=~"$model"}'
    panels = [
        row("Front end"),
        panel("timeseries", "Request rate by endpoint", "Requests per second answered by the front end.",
              [query(f"sum by (endpoint) (rate(medrobust_http_requests_total[{rate}]))", "{{endpoint}}")], unit="reqps", min_value=0),
        panel("timeseries", "Error rate", "Share of requests (health checks and scrapes left out) answered "
              "with 4xx and 5xx. Alert MedrobustFrontendErrorRateHigh fires at 5% 5xx.",
              [query(f'sum(rate(medrobust_http_requests_total{{status=~"{cls}..", {NOT_PREDICTIONS}}}[{rate}])) / '
                     f"sum(rate(medrobust_http_requests_total{{{NOT_PREDICTIONS}}}[{rate}]))", f"{cls}xx", ref=ref)
               for cls, ref in (("4", "A"), ("5", "B"))],
              unit="percentunit", min_value=0, max_value=1),
        # By endpoint, as the alert computes it: pooled with 1 s /metrics scrapes, slow predictions vanish from p50/p90.
        panel("timeseries", "Latency quantiles", "Front-end request duration by endpoint (health checks and scrapes "
              "left out). Alert MedrobustFrontendLatencyHigh fires at p99 > 2.5 s.",
              quantiles("medrobust_http_request_duration_seconds_bucket", "endpoint, ", "{{endpoint}}", f"{{{NOT_PREDICTIONS}}}"),
              unit="s", min_value=0),
        panel("timeseries", "Predictions by model and label", "Predictions per second by predicted label.",
              [query(f'sum by (model, label) (rate(medrobust_predictions_total{{model=~"$model"}}[{rate}]))', "{{model}} {{label}}")],
              unit="reqps", min_value=0),
        panel("timeseries", "Backend latency by signature", "Time the front end waits for the model server, per signature.",
              quantiles("medrobust_backend_request_duration_seconds_bucket", "backend, signature, ", "{{backend}} {{signature}}"),
              unit="s", min_value=0),
        panel("timeseries", "Backend errors by code", "gRPC / backend failures: UNAVAILABLE -> 503, DEADLINE_EXCEEDED -> 504.",
              [query(f"sum by (backend, code) (rate(medrobust_backend_errors_total[{rate}]))", "{{backend}} {{code}}")],
              width=18, unit="reqps", min_value=0),
        panel("stat", "Models loaded", "Models the front end can serve right now.",
              [query("max(medrobust_models_loaded)", "models", instant=True)], width=6, unit="none",
              thresholds=[("red", None), ("green", 1)]),
        row("TensorFlow Serving"),
        panel("timeseries", "TF Serving requests by model and status", "Requests per second TF Serving answered.",
              [query(f"sum by (model_name, status) (rate(:tensorflow:serving:request_count{tf_model}[{rate}]))", "{{model_name}} {{status}}")],
              unit="reqps", min_value=0),
        panel("timeseries", "TF Serving request latency", "End-to-end latency inside TF Serving, per model and API.",
              quantiles(":tensorflow:serving:request_latency_bucket", "model_name, API, ", "{{model_name}} {{API}}", tf_model),
              unit="µs", min_value=0),
        panel("timeseries", "TF Serving runtime latency", "Time spent running the model graph, per model.",
              quantiles(":tensorflow:serving:runtime_latency_bucket", "model_name, ", "{{model_name}}", tf_model),
              unit="µs", min_value=0),
        panel("timeseries", "Batching queueing latency", "Time requests wait for a batch to form (batching.config).",
              quantiles(":tensorflow:serving:batching_session:queuing_latency_bucket", "", ""), unit="µs", min_value=0),
    ]
    variables = [
        TASK,
        query_variable("model", "Model", 'label_values(medrobust_predictions_total{model=~"($task)-.*"}, model)'),
    ]
    return dashboard("medrobust-service", "medrobust: Service",
                     "The front end and TensorFlow Serving: traffic, errors and latency.",
                     variables, panels, time_from="now-6h")


DASHBOARDS = {"robustness.json": robustness, "service.json": service}


def render(build) -> str:
    """The committed text of one dashboard."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report dashboards that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = DASHBOARDS_DIR / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python deploy/grafana/build_dashboards.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
