"""Grafana provisioning and dashboards read as files: generated, complete, and every query reads
metrics and labels the services export.

promtool's parsing and evaluation of the same queries run in tests/integration/test_deploy_grafana.py.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tests import deploy_queries as dq

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
ALLOWED_UNITS = {"percentunit", "reqps", "s", "µs", "short", "none"}
TF_SERVING_METRICS = {
    ":tensorflow:serving:request_count",
    ":tensorflow:serving:request_latency_bucket",
    ":tensorflow:serving:runtime_latency_bucket",
    ":tensorflow:serving:batching_session:queuing_latency_bucket",
}


def _builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _datasource_uid() -> str:
    provisioning = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = provisioning["datasources"]
    assert datasource["type"] == "prometheus"
    return datasource["uid"]


def test_committed_dashboards_are_what_the_builder_generates() -> None:
    builder = _builder()
    assert set(builder.DASHBOARDS) == {"robustness.json", "service.json"}
    assert {p.name for p in (GRAFANA / "dashboards").glob("*.json")} == set(builder.DASHBOARDS)
    for name, build in builder.DASHBOARDS.items():
        committed = (GRAFANA / "dashboards" / name).read_text()
        assert committed == builder.render(build), f"{name} is stale: run python deploy/grafana/build_dashboards.py"
    assert builder.main(["--check"]) == 0


def test_every_panel_has_a_datasource_a_query_and_a_unit() -> None:
    uid = _datasource_uid()
    for name, dashboard in dq.dashboards().items():
        ids = [item["id"] for item in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in dq.panels(dashboard):
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid and target["expr"].strip(), where
            assert panel["fieldConfig"]["defaults"]["unit"] in ALLOWED_UNITS, where
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, where


def test_dashboards_have_task_and_model_variables_used_by_their_queries() -> None:
    for name, dashboard in dq.dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert {"task", "model"} <= set(variables), name
        for variable in ("task", "model"):
            assert variables[variable]["type"] == "query" and variables[variable]["includeAll"], (name, variable)
        text = " ".join(q.raw_expr for q in dq.dashboard_queries() if q.dashboard == name)
        assert '=~"$model"' in text, f"{name}: no query filters by $model"
        # Multi-value variables become regexes: they must only be used with =~.
        assert not re.search(r'[^=!]=\s*"\$(task|model)"', text), name


def test_robustness_dashboard_has_the_panels_the_issue_lists() -> None:
    titles = [p["title"] for p in dq.panels(dq.dashboards()["robustness.json"])]
    for expected in ("Robust accuracy against epsilon", "attentive minus baseline", "over time, by version",
                     "Time since last successful audit", "Sanity checks"):
        assert any(expected.lower() in title.lower() for title in titles), expected


def test_service_dashboard_has_the_panels_the_issue_lists() -> None:
    titles = [p["title"] for p in dq.panels(dq.dashboards()["service.json"])]
    for expected in ("Request rate", "Error rate", "Latency quantiles", "Backend latency", "TF Serving"):
        assert any(expected.lower() in title.lower() for title in titles), expected


def test_queries_read_only_known_metrics_and_legends_use_their_labels() -> None:
    for query in dq.dashboard_queries():
        where = f"{query.dashboard}: {query.panel} {query.ref_id}"
        assert query.metrics, where
        for metric in query.metrics:
            assert metric in dq.METRIC_LABELS or metric in TF_SERVING_METRICS, f"{where}: unknown metric {metric}"
        medrobust = [m for m in query.metrics if m in dq.METRIC_LABELS]
        if medrobust:
            available = frozenset.union(*(dq.METRIC_LABELS[m] for m in medrobust))
            assert query.required_labels <= available, f"{where}: {query.required_labels - available} not exported"
    for _, _, selector in dq.variable_queries():
        assert dq.metric_names(selector) <= set(dq.METRIC_LABELS), selector


def test_substitution_leaves_no_grafana_variables() -> None:
    for query in dq.dashboard_queries():
        assert "$" not in query.expr and "[[" not in query.expr, query.expr
    with pytest.raises(KeyError, match=r"\$nope"):
        dq.substitute('x{a="$nope"}')


def test_provisioning_matches_the_compose_stack() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts == {"./grafana/provisioning": "/etc/grafana/provisioning", "./grafana/dashboards": "/var/lib/grafana/dashboards"}
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "medrobust.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert datasource["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]


def test_robustness_dashboard_shows_worst_class_and_degenerate_beside_the_mean() -> None:
    titles = [p["title"] for p in dq.panels(dq.dashboards()["robustness.json"])]
    for expected in ("Worst-class robust accuracy against epsilon", "Robust accuracy per class", "Degenerate models",
                     "Robustness score (latest audit, degenerate models left out)", "Audit set size"):
        assert any(expected.lower() in title.lower() for title in titles), expected
    # Every robustness-score query leaves degenerate models out.
    for q in dq.dashboard_queries():
        if "medrobust_audit_robustness_score" in q.metrics:
            assert "unless on (model, version) (medrobust_audit_degenerate == 1)" in q.raw_expr, q.panel
