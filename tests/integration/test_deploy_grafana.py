"""Grafana dashboards: every query parses with promtool, and the score panel's queries evaluate as meant.

The checks that only read the dashboards and provisioning files are in tests/unit/test_deploy_grafana.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import deploy_queries as dq


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """promtool has no bare PromQL parser; a rule file of recording rules is parsed the same way."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    exprs = [q.expr for q in dq.dashboard_queries()]
    exprs += [selector for _, _, selector in dq.variable_queries()]
    exprs += [a.expr for a in dq.alert_expressions()]
    rules = {"groups": [{"name": "deploy-queries", "rules": [
        {"record": f"medrobust:deploy_query_{n}", "expr": expr} for n, expr in enumerate(exprs)
    ]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
    # And the check is real: a broken query fails it.
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x", "expr": "sum by (model (x)"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=60, check=False).returncode != 0


def _panel_expr(title: str, ref: str = "A") -> str:
    return next(q.expr for q in dq.dashboard_queries() if q.dashboard == "robustness.json" and q.panel == title and q.ref_id == ref)


def test_the_score_panel_does_not_rank_a_one_class_model_as_robust(tmp_path: Path) -> None:
    """The panels' queries on a one-class model and a trained one, evaluated by promtool.

    Each figure is exported twice (a worker and the front end read the same store): the panels
    read one copy, by the metric's own labels (the aggregation drops the metric name).
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    model = 'task="derm", backbone="inception_resnet_v2", attention="true", attack="linf_pgd"'
    one_class = f'{model}, model="derm-inception_resnet_v2-attention", version="1"'
    trained = 'task="derm", backbone="resnet50", attention="true", attack="linf_pgd", model="derm-resnet50-attention", version="2"'
    series = [
        (f"medrobust_audit_robustness_score{{{one_class}}}", "0.61"),  # the class's share, at every epsilon
        (f"medrobust_audit_robustness_score{{{trained}}}", "0.25"),
        ('medrobust_audit_degenerate{task="derm", model="derm-inception_resnet_v2-attention", version="1"}', "1"),
        ('medrobust_audit_degenerate{task="derm", model="derm-resnet50-attention", version="2"}', "0"),
        ('medrobust_audit_budget_info{task="derm", model="derm-inception_resnet_v2-attention", version="1", '
         'attack="linf_pgd", budget="standard"}', "1"),
        ('medrobust_audit_budget_info{task="derm", model="derm-resnet50-attention", version="2", attack="linf_pgd", '
         'budget="reduced (10 steps)"}', "1"),
        (f'medrobust_audit_worst_class_robust_accuracy{{{one_class}, epsilon="0.01"}}', "0"),
        (f'medrobust_audit_worst_class_robust_accuracy{{{trained}, epsilon="0.01"}}', "0.2"),
    ]
    expr_tests = [
        {"expr": _panel_expr("Robustness score (latest audit, degenerate models left out)"), "eval_time": "1m",
         # The trained model's score only, named with its run's budget.
         "exp_samples": [{"labels": f'{{{trained}, budget="reduced (10 steps)"}}', "value": 0.25}]},
        {"expr": _panel_expr("Degenerate models"), "eval_time": "1m", "exp_samples": [
            {"labels": 'medrobust_audit_degenerate{task="derm", model="derm-inception_resnet_v2-attention", version="1"}', "value": 1},
            {"labels": 'medrobust_audit_degenerate{task="derm", model="derm-resnet50-attention", version="2"}', "value": 0},
        ]},
        {"expr": _panel_expr("Worst-class robust accuracy against epsilon (latest audit)"), "eval_time": "1m", "exp_samples": [
            {"labels": f'medrobust_audit_worst_class_robust_accuracy{{{one_class}, epsilon="0.01"}}', "value": 0},
            {"labels": f'medrobust_audit_worst_class_robust_accuracy{{{trained}, epsilon="0.01"}}', "value": 0.2},
        ]},
    ]
    series += [(s.replace("}", ', job="medrobust-frontend"}'), v) for s, v in series]  # the second exporter
    for case in expr_tests:
        for sample in case["exp_samples"]:
            sample["labels"] = sample["labels"][sample["labels"].index("{"):]
    (tmp_path / "none.yml").write_text("groups: []\n")
    tests = {"rule_files": ["none.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": f"{v}x5"} for s, v in series], "promql_expr_test": expr_tests,
    }]}
    (tmp_path / "panels_test.yml").write_text(yaml.safe_dump(tests, allow_unicode=True))
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "panels_test.yml")], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
