"""The audit's Prometheus metrics: the exact names and labels dashboards rely on, restored from the store."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from audit.metrics import AuditMetrics
from audit.results import AuditResult, SanityCheck, wilson_interval
from audit.store import AuditStore
from tests.audit_runs import CARD, EIGHT, OLD_SCHEMA_DUMP, make_result, one_class_result

POINT = {"task", "model", "backbone", "attention", "version", "attack", "epsilon"}
MODEL = {"task", "model", "backbone", "attention", "version"}
NAMES = {
    "medrobust_audit_robust_accuracy": POINT,
    "medrobust_audit_balanced_robust_accuracy": POINT,
    "medrobust_audit_worst_class_robust_accuracy": POINT,
    "medrobust_audit_robust_accuracy_lower": POINT,
    "medrobust_audit_class_robust_accuracy": POINT | {"class"},
    "medrobust_audit_clean_accuracy": MODEL,
    "medrobust_audit_balanced_clean_accuracy": MODEL,
    "medrobust_audit_robustness_score": MODEL | {"attack"},
    "medrobust_audit_samples": {"task", "model", "version", "attack"},
    "medrobust_audit_degenerate": {"task", "model", "version"},
    "medrobust_audit_attention_gain": {"task", "backbone", "attack", "epsilon"},
    "medrobust_audit_runs_total": {"model", "status"},
    "medrobust_audit_duration_seconds": {"model"},
    "medrobust_audit_last_success_timestamp_seconds": {"model"},
    "medrobust_audit_sanity_check_failed": {"model", "version", "attack", "check"},
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


def _series(registry) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found.setdefault(sample.name, []).append(sample.labels)
    return found


def test_names_and_labels_are_exactly_the_issues(store):
    registry = CollectorRegistry()
    AuditMetrics(registry).restore(store)
    found = _series(registry)
    assert {name: {label for labels in series for label in labels} for name, series in found.items()} == NAMES
    for name, series in found.items():  # every series of a family carries every label
        assert all(set(labels) == NAMES[name] for labels in series), name


def test_restored_from_the_store_with_the_grids_label_values(store):
    registry = CollectorRegistry()
    AuditMetrics(registry).restore(store)
    value = registry.get_sample_value
    model = {"task": "demo", "model": "demo-resnet50-attention", "backbone": "resnet50", "attention": "true", "version": "3"}
    assert value("medrobust_audit_robust_accuracy", {**model, "attack": "linf_pgd", "epsilon": "0.01"}) == 0.5
    assert value("medrobust_audit_robust_accuracy", {**model, "attack": "linf_pgd", "epsilon": "0"}) == 0.75
    assert value("medrobust_audit_clean_accuracy", model) == 0.75
    assert value("medrobust_audit_robustness_score", {**model, "attack": "linf_pgd"}) == pytest.approx(0.375)
    gain = {"task": "demo", "backbone": "resnet50", "attack": "linf_pgd"}
    assert value("medrobust_audit_attention_gain", {**gain, "epsilon": "0.01"}) == pytest.approx(0.25)
    assert value("medrobust_audit_attention_gain", {**gain, "epsilon": "0.02"}) == pytest.approx(0.25)
    assert value("medrobust_audit_runs_total", {"model": "demo-resnet50-baseline", "status": "succeeded"}) == 1
    assert value("medrobust_audit_runs_total", {"model": "demo-resnet50-baseline", "status": "failed"}) == 1
    check = {"version": "3", "attack": "linf_pgd", "check": "gradients_nonzero"}
    assert value("medrobust_audit_sanity_check_failed", {"model": "demo-resnet50-attention", **check}) == 1
    assert value("medrobust_audit_sanity_check_failed", {"model": "demo-resnet50-baseline", **check}) == 0
    assert value("medrobust_audit_degenerate", {"task": "demo", "model": "demo-resnet50-attention", "version": "3"}) == 0
    assert value("medrobust_audit_samples", {"task": "demo", "model": "demo-resnet50-attention", "version": "3", "attack": "linf_pgd"}) == 4
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


def _stored(store, result, *, config=None, attack="linf_pgd"):
    """`result` written to the store as a succeeded run; returns its record, as publish() gets it."""
    card = {"task": result.task, "backbone": result.backbone, "attention": result.attention}
    run_id = store.start_run(model=result.model, version=result.version, card=card, backend="embedded", attack=attack,
                             config={"steps": 20} if config is None else config)
    store.finish_run(run_id, result)
    return store.get_run(run_id)


@pytest.fixture
def empty_store(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'b.sqlite'}")
    yield store
    store.close()


def _labels(model: str, version: int = 1, attention: bool = True) -> dict[str, str]:
    return {"task": "demo", "model": model, "backbone": "resnet50", "attention": "true" if attention else "false", "version": str(version)}


def test_a_one_class_model_is_flagged_and_its_worst_class_is_zero(empty_store):
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    metrics.publish(_stored(empty_store, one_class_result(model="demo-resnet50-attention")))
    metrics.publish(_stored(empty_store, make_result(model="demo-resnet50-baseline", attention=False, audit_set=EIGHT)))
    value = registry.get_sample_value
    point = {**_labels("demo-resnet50-attention"), "attack": "linf_pgd", "epsilon": "0.01"}
    # The plain mean and the score flatter it ...
    assert value("medrobust_audit_robust_accuracy", point) == 0.5
    assert value("medrobust_audit_robustness_score", {**_labels("demo-resnet50-attention"), "attack": "linf_pgd"}) == 0.5
    # ... the figures beside them do not.
    assert value("medrobust_audit_worst_class_robust_accuracy", point) == 0.0
    assert value("medrobust_audit_balanced_robust_accuracy", point) == pytest.approx(1 / 3)
    assert {c: value("medrobust_audit_class_robust_accuracy", {**point, "class": c}) for c in "abc"} == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert value("medrobust_audit_robust_accuracy_lower", point) == pytest.approx(wilson_interval(4, 8)[0])
    assert value("medrobust_audit_balanced_clean_accuracy", _labels("demo-resnet50-attention")) == pytest.approx(1 / 3)
    short = {"task": "demo", "version": "1"}
    assert value("medrobust_audit_degenerate", {**short, "model": "demo-resnet50-attention"}) == 1
    assert value("medrobust_audit_degenerate", {**short, "model": "demo-resnet50-baseline"}) == 0
    assert value("medrobust_audit_samples", {**short, "model": "demo-resnet50-attention", "attack": "linf_pgd"}) == 8
    # Nor is a degenerate model's difference with its baseline an attention gain.
    assert "medrobust_audit_attention_gain" not in _series(registry)


def test_retain_removes_every_series_of_versions_no_longer_served(empty_store):
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    attentive, baseline = "demo-resnet50-attention", "demo-resnet50-baseline"
    for result, attack in (
        (make_result(model=attentive, version=1), "linf_pgd"),
        (make_result(model=attentive, version=1), "fgsm"),
        (make_result(model=attentive, version=2), "linf_pgd"),
        (make_result(model=baseline, version=1, attention=False, robust=(0.75, 0.25, 0.0)), "linf_pgd"),
    ):
        metrics.publish(_stored(empty_store, AuditResult(**{**result.__dict__, "attack": attack}), attack=attack))
    metrics.count(baseline, "succeeded")

    def versions() -> dict[str, set[tuple[str, str]]]:
        found: dict[str, set[tuple[str, str]]] = {}
        for name, series in _series(registry).items():
            for labels in series:
                if "version" in labels:
                    found.setdefault(name, set()).add((labels["model"], labels["version"]))
        return found

    versioned = {name for name in NAMES if "version" in NAMES[name]}
    assert set(versions()) == versioned
    assert all(pairs == {(attentive, "1"), (attentive, "2"), (baseline, "1")} for pairs in versions().values())
    gain = {"task": "demo", "backbone": "resnet50", "attack": "linf_pgd", "epsilon": "0.01"}
    assert registry.get_sample_value("medrobust_audit_attention_gain", gain) == pytest.approx(0.25)

    metrics.retain({attentive: {2}, baseline: {1}})  # version 1 of the attentive model rolled back
    assert set(versions()) == versioned
    assert all(pairs == {(attentive, "2"), (baseline, "1")} for pairs in versions().values()), versions()
    assert registry.get_sample_value("medrobust_audit_attention_gain", gain) == pytest.approx(0.25)  # v2 and the baseline

    metrics.retain({attentive: {2}})  # the baseline is no longer served at all
    assert all(pairs == {(attentive, "2")} for pairs in versions().values()), versions()
    assert registry.get_sample_value("medrobust_audit_attention_gain", gain) is None  # no pair left
    for name in ("medrobust_audit_duration_seconds", "medrobust_audit_last_success_timestamp_seconds"):
        assert registry.get_sample_value(name, {"model": baseline}) is None  # it must not look stale
        assert registry.get_sample_value(name, {"model": attentive}) is not None
    assert registry.get_sample_value("medrobust_audit_runs_total", {"model": baseline, "status": "succeeded"}) == 1

    metrics.retain({})
    assert set(versions()) == set()


@pytest.mark.parametrize(
    ("baseline_changes", "baseline_config"),
    [
        ({"audit_set": EIGHT}, {"steps": 20}),  # another audit set
        ({}, {"steps": 10}),  # other steps
        ({"epsilons": ("0", "0.01", "0.04")}, {"steps": 20}),  # another grid
    ],
    ids=["audit-set", "steps", "grid"],
)
def test_the_attention_gain_pairs_only_comparable_runs(empty_store, baseline_changes, baseline_config):
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    metrics.publish(_stored(empty_store, make_result(model="demo-resnet50-attention")))
    comparable_baseline = make_result(model="demo-resnet50-baseline", attention=False, robust=(0.75, 0.25, 0.0))
    metrics.publish(_stored(empty_store, comparable_baseline))
    assert len(_series(registry)["medrobust_audit_attention_gain"]) == 3
    # A newer baseline run that cannot be compared withdraws the gain rather than leave it stale.
    other = make_result(model="demo-resnet50-baseline", attention=False, robust=(0.75, 0.25, 0.0), **baseline_changes)
    metrics.publish(_stored(empty_store, other, config=baseline_config))
    assert "medrobust_audit_attention_gain" not in _series(registry)
    # A worker restored from this store publishes nothing either.
    restored = CollectorRegistry()
    AuditMetrics(restored).restore(empty_store)
    assert "medrobust_audit_attention_gain" not in _series(restored)


def test_sanity_checks_are_published_by_version_and_attack_whatever_their_names(empty_store):
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    checks = (SanityCheck("attack_made_progress", False, "no loss decrease"), SanityCheck("independent_epsilons_consistent", True, "ok"))
    metrics.publish(_stored(empty_store, make_result(sanity=checks)))
    labels = {"model": "demo-resnet50-attention", "version": "1", "attack": "linf_pgd"}
    value = registry.get_sample_value
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "attack_made_progress"}) == 1
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "independent_epsilons_consistent"}) == 0
    # The next run has other checks: the one it no longer has is withdrawn, not left failing.
    metrics.publish(_stored(empty_store, make_result(sanity=(SanityCheck("degenerate_predictions", True, "ok"),))))
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "attack_made_progress"}) is None
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "degenerate_predictions"}) == 0


def test_an_older_run_never_overwrites_a_newer_one(empty_store):
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    old = _stored(empty_store, make_result(robust=(0.75, 0.5, 0.25)))
    new = _stored(empty_store, make_result(robust=(0.75, 0.125, 0.0)))
    metrics.publish(new)
    metrics.publish(old)
    point = {**_labels("demo-resnet50-attention"), "attack": "linf_pgd", "epsilon": "0.01"}
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", point) == 0.125


def test_a_worker_restored_from_a_first_schema_database_flags_its_one_class_model(tmp_path):
    path = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(OLD_SCHEMA_DUMP.read_text())
    store = AuditStore(f"sqlite:///{path}")
    registry = CollectorRegistry()
    AuditMetrics(registry).restore(store)
    store.close()
    value = registry.get_sample_value
    assert value("medrobust_audit_degenerate", {"task": "demo", "model": "demo-resnet50-baseline", "version": "1"}) == 1
    point = {**_labels("demo-resnet50-baseline", attention=False), "attack": "linf_pgd", "epsilon": "0.02"}
    assert value("medrobust_audit_worst_class_robust_accuracy", point) == 0.0
    assert value("medrobust_audit_robustness_score", {**_labels("demo-resnet50-attention"), "attack": "linf_pgd"}) == pytest.approx(0.375)


def test_the_scrape_drops_the_metrics_of_a_version_taken_out_of_the_repository(empty_store, tmp_path):
    from medrobust.compose import _StoreFigures
    from service.embedded import EmbeddedPredictor

    repo = tmp_path / "repo"
    model = "demo-resnet50-attention"
    for version in (1, 2):  # what the predictor's poll reads: the version folders and the newest card
        card = repo / model / str(version) / "assets.extra" / "model_card.json"
        card.parent.mkdir(parents=True)
        card.write_text(json.dumps(CARD))
    for version in (1, 2):
        _stored(empty_store, make_result(model=model, version=version))
    predictor = EmbeddedPredictor(repo, poll_seconds=0)
    registry = CollectorRegistry()
    registry.register(_StoreFigures(empty_store, predictor))
    point = {**_labels(model), "attack": "linf_pgd", "epsilon": "0.01"}

    assert registry.get_sample_value("medrobust_audit_robust_accuracy", {**point, "version": "1"}) == 0.5
    shutil.rmtree(repo / model / "1")
    predictor.list_models()  # the predictor notices (its poll runs when asked, with poll_seconds=0)
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", {**point, "version": "1"}) is None
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", {**point, "version": "2"}) == 0.5
    predictor.close()
