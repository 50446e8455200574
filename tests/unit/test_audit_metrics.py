"""The audit's Prometheus metrics: the exact names and labels dashboards rely on, restored from the store."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from audit.metrics import AuditMetrics
from audit.store import AuditStore
from tests.unit.test_audit_store import CARD, make_result

NAMES = {
    "medrobust_audit_robust_accuracy": {"task", "model", "backbone", "attention", "version", "attack", "epsilon"},
    "medrobust_audit_clean_accuracy": {"task", "model", "backbone", "attention", "version"},
    "medrobust_audit_robustness_score": {"task", "model", "backbone", "attention", "version", "attack"},
    "medrobust_audit_attention_gain": {"task", "backbone", "attack", "epsilon"},
    "medrobust_audit_runs_total": {"model", "status"},
    "medrobust_audit_duration_seconds": {"model"},
    "medrobust_audit_last_success_timestamp_seconds": {"model"},
    "medrobust_audit_sanity_check_failed": {"model", "check"},
}


@pytest.fixture
def store(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    for model, attention, robust, ok in (
        ("demo-resnet50-baseline", False, (0.75, 0.25, 0.0), True),
        ("demo-resnet50-attention", True, (0.75, 0.5, 0.25), False),
    ):
        run_id = store.start_run(model=model, version=3, card={**CARD, "attention": attention}, backend="embedded", attack="linf_pgd", config={})
        store.finish_run(run_id, make_result(model=model, version=3, attention=attention, robust=robust, sanity_ok=ok))
    failed = store.start_run(model="demo-resnet50-baseline", version=3, card=CARD, backend="embedded", attack="linf_pgd", config={})
    store.fail_run(failed, "boom")
    yield store
    store.close()


def test_names_and_labels_are_exactly_the_issues(store):
    registry = CollectorRegistry()
    AuditMetrics(registry).restore(store)
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            found.setdefault(sample.name, set()).update(sample.labels)
    assert found == NAMES


def test_restored_from_the_store_with_the_grids_label_values(store):
    registry = CollectorRegistry()
    AuditMetrics(registry).restore(store)
    value = registry.get_sample_value
    model = {"task": "demo", "model": "demo-resnet50-attention", "backbone": "resnet50", "attention": "true", "version": "3"}
    assert value("medrobust_audit_robust_accuracy", {**model, "attack": "linf_pgd", "epsilon": "0.01"}) == 0.5
    assert value("medrobust_audit_robust_accuracy", {**model, "attack": "linf_pgd", "epsilon": "0"}) == 0.75
    assert value("medrobust_audit_clean_accuracy", model) == 0.75
    assert value("medrobust_audit_robustness_score", {**model, "attack": "linf_pgd"}) == pytest.approx(0.5)
    gain = {"task": "demo", "backbone": "resnet50", "attack": "linf_pgd"}
    assert value("medrobust_audit_attention_gain", {**gain, "epsilon": "0.01"}) == pytest.approx(0.25)
    assert value("medrobust_audit_attention_gain", {**gain, "epsilon": "0.02"}) == pytest.approx(0.25)
    assert value("medrobust_audit_runs_total", {"model": "demo-resnet50-baseline", "status": "succeeded"}) == 1
    assert value("medrobust_audit_runs_total", {"model": "demo-resnet50-baseline", "status": "failed"}) == 1
    assert value("medrobust_audit_sanity_check_failed", {"model": "demo-resnet50-attention", "check": "gradients_nonzero"}) == 1
    assert value("medrobust_audit_sanity_check_failed", {"model": "demo-resnet50-baseline", "check": "gradients_nonzero"}) == 0
    assert value("medrobust_audit_duration_seconds", {"model": "demo-resnet50-baseline"}) == 1.5
    assert value("medrobust_audit_last_success_timestamp_seconds", {"model": "demo-resnet50-baseline"}) > 1.7e9
    assert b"medrobust_audit_robust_accuracy{" in generate_latest(registry)


def test_two_registries_do_not_share_series():
    a, b = CollectorRegistry(), CollectorRegistry()
    AuditMetrics(a).count("m", "failed", 2.0)
    AuditMetrics(b)
    assert a.get_sample_value("medrobust_audit_runs_total", {"model": "m", "status": "failed"}) == 1
    assert b.get_sample_value("medrobust_audit_runs_total", {"model": "m", "status": "failed"}) is None


def test_run_counters_of_a_declared_model_start_at_zero():
    # Prometheus cannot see a series' first value as an increase: a run counted on a series
    # created by that same run would never show in increase()/rate() panels.
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    metrics.declare("demo-resnet50-attention")
    for status in ("succeeded", "failed"):
        assert registry.get_sample_value("medrobust_audit_runs_total", {"model": "demo-resnet50-attention", "status": status}) == 0
    metrics.count("demo-resnet50-attention", "succeeded")
    assert registry.get_sample_value("medrobust_audit_runs_total", {"model": "demo-resnet50-attention", "status": "succeeded"}) == 1
