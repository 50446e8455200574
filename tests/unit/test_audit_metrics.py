"""The audit's Prometheus metrics: the exact names and labels dashboards rely on, read from the store at each scrape."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from audit.metrics import AuditCollector, metric_families
from audit.results import AuditResult, SanityCheck, wilson_interval
from audit.store import AuditStore
from tests.audit_runs import CARD, EIGHT, OLD_SCHEMA_DUMP, make_result, one_class_result

POINT = {"task", "model", "backbone", "attention", "version", "attack", "epsilon"}
MODEL = {"task", "model", "backbone", "attention", "version"}
QUEUE = ("medrobust_audit_jobs_queued", "medrobust_audit_jobs_running", "medrobust_audit_jobs_failed",
         "medrobust_audit_oldest_queued_job_age_seconds")
NAMES = {
    **{name: set() for name in QUEUE},
    "medrobust_audit_progress_ratio": {"model", "version", "attack"},
    "medrobust_audit_robust_accuracy": POINT,
    "medrobust_audit_balanced_robust_accuracy": POINT,
    "medrobust_audit_worst_class_robust_accuracy": POINT,
    "medrobust_audit_robust_accuracy_lower": POINT,
    "medrobust_audit_worst_class_robust_accuracy_lower": POINT,
    "medrobust_audit_balanced_robust_accuracy_lower": POINT,
    "medrobust_audit_class_robust_accuracy": POINT | {"class"},
    "medrobust_audit_class_robust_accuracy_lower": POINT | {"class"},
    "medrobust_audit_clean_accuracy": MODEL,
    "medrobust_audit_balanced_clean_accuracy": MODEL,
    "medrobust_audit_clean_accuracy_lower": MODEL,
    "medrobust_audit_balanced_clean_accuracy_lower": MODEL,
    "medrobust_audit_robustness_score": MODEL | {"attack"},
    "medrobust_audit_samples": {"task", "model", "version", "attack"},
    "medrobust_audit_budget_info": {"task", "model", "version", "attack", "budget"},
    "medrobust_audit_degenerate": {"task", "model", "version"},
    "medrobust_audit_attention_gain": {"task", "backbone", "attack", "epsilon"},
    "medrobust_audit_runs_total": {"model", "status"},
    "medrobust_audit_duration_seconds": {"model"},
    "medrobust_audit_last_success_timestamp_seconds": {"model"},
    "medrobust_audit_sanity_check_failed": {"model", "version", "attack", "check"},
    "medrobust_audit_unauditable": {"model", "task"},
}


def served(*models, unauditable=()):
    """A `served` callable: (name, versions) pairs, plus models of a task no audit set covers."""
    listed = [SimpleNamespace(name=n, versions=tuple(v), card=CARD) for n, v in models]
    listed += [SimpleNamespace(name=n, versions=(1,), card={**CARD, "task": "chest"}) for n in unauditable]
    return lambda: listed


def no_chest(models):
    """The audit sets' answer: the chest task has none."""
    return [(name, card["task"]) for name, card in models if card["task"] == "chest"]


def registered(store, **kwargs) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AuditCollector(store, **kwargs))
    return registry


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


def test_each_versions_budget_is_named_standard_or_reduced(tmp_path):
    """The latest run's budget per version and attack: a reduced one is named, the standard one is "standard"."""
    store = AuditStore(f"sqlite:///{tmp_path / 'b.sqlite'}")
    try:
        for model, config in (("demo-resnet50-baseline", {"steps": 25, "queries": 300}),
                              ("demo-resnet50-attention", {"steps": 100, "queries": 5000})):
            run_id = store.start_run(model=model, version=3, card=CARD, backend="embedded", attack="ensemble",
                                     config=config)
            store.finish_run(run_id, make_result(model=model, version=3))
        found = _series(registered(store))
    finally:
        store.close()
    assert {(labels["model"], labels["attack"], labels["budget"]) for labels in found["medrobust_audit_budget_info"]} == {
        ("demo-resnet50-baseline", "ensemble", "reduced (25 iterations, 300 queries)"),
        ("demo-resnet50-attention", "ensemble", "standard"),
    }


def test_names_and_labels_are_exactly_the_issues(store):
    registry = registered(
        store, served=served(("demo-resnet50-baseline", (3,)), ("demo-resnet50-attention", (3,)), unauditable=("chest-x",)),
        unauditable=no_chest,
    )
    found = _series(registry)
    # A running job's progress has a series only while one runs (tested with the queue below).
    expected = {name: labels for name, labels in NAMES.items() if name != "medrobust_audit_progress_ratio"}
    assert {name: {label for labels in series for label in labels} for name, series in found.items()} == expected
    for name, series in found.items():  # every series of a family carries every label
        assert all(set(labels) == NAMES[name] for labels in series), name
    assert set(metric_families()) == set(NAMES)  # what the deploy checks read off the collector


def test_read_from_the_store_with_the_grids_label_values(store):
    registry = registered(store)
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
    assert value("medrobust_audit_duration_seconds", {"model": "demo-resnet50-attention"}) == 1.5
    assert value("medrobust_audit_last_success_timestamp_seconds", {"model": "demo-resnet50-baseline"}) > 1.7e9
    assert b"medrobust_audit_robust_accuracy{" in generate_latest(registry)


def test_the_latest_run_wall_time_counts_a_failed_run_too(store):
    # The baseline's latest run failed (its duration was not given): no wall time to show; the attentive one's is 1.5 s.
    run_id = store.start_run(model="demo-resnet50-attention", version=3, card=CARD, backend="embedded", attack="linf_pgd", config={})
    store.fail_run(run_id, "boom", duration_seconds=7.0)
    value = registered(store).get_sample_value
    assert value("medrobust_audit_duration_seconds", {"model": "demo-resnet50-attention"}) == 7.0
    assert value("medrobust_audit_runs_total", {"model": "demo-resnet50-attention", "status": "failed"}) == 1


def test_nothing_is_kept_between_scrapes(empty_store):
    """A run stored after registration is at the next scrape; a collector registered with no runs holds none."""
    registry = registered(empty_store)
    assert set(_series(registry)) == set(QUEUE)  # only the (empty) queue's figures
    assert all(registry.get_sample_value(name) == 0 for name in QUEUE)
    _stored(empty_store, make_result())
    point = {**_labels("demo-resnet50-attention"), "attack": "linf_pgd", "epsilon": "0.01"}
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", point) == 0.5


def test_registering_does_not_read_the_store():
    registry = CollectorRegistry()
    registry.register(AuditCollector(None))  # describe() answers the names without a query
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(AuditCollector(None))


def test_run_counters_of_a_served_model_start_at_zero(empty_store):
    # Prometheus cannot see a series' first value as an increase: a run counted on a series
    # created by that same run would never show in increase()/rate() panels.
    registry = registered(empty_store, served=served(("demo-resnet50-attention", (1,))))
    for status in ("succeeded", "failed"):
        assert registry.get_sample_value("medrobust_audit_runs_total", {"model": "demo-resnet50-attention", "status": status}) == 0
    _stored(empty_store, make_result())
    assert registry.get_sample_value("medrobust_audit_runs_total", {"model": "demo-resnet50-attention", "status": "succeeded"}) == 1


def test_a_served_model_without_an_audit_set_is_unauditable(empty_store):
    registry = registered(
        empty_store, served=served(("demo-resnet50-attention", (1,)), unauditable=("chest-resnet50-baseline",)),
        unauditable=no_chest,
    )
    value = registry.get_sample_value
    assert value("medrobust_audit_unauditable", {"model": "chest-resnet50-baseline", "task": "chest"}) == 1
    assert value("medrobust_audit_unauditable", {"model": "demo-resnet50-attention", "task": "demo"}) is None


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
    _stored(empty_store, one_class_result(model="demo-resnet50-attention"))
    _stored(empty_store, make_result(model="demo-resnet50-baseline", attention=False, audit_set=EIGHT))
    registry = registered(empty_store)
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
    # Every figure's lower bound: the worst class (b, 0 of 2), each class, balanced (its bootstrap), clean.
    result = one_class_result()
    assert value("medrobust_audit_worst_class_robust_accuracy_lower", point) == 0.0
    assert value("medrobust_audit_class_robust_accuracy_lower", {**point, "class": "a"}) == pytest.approx(wilson_interval(4, 4)[0])
    assert value("medrobust_audit_balanced_robust_accuracy_lower", point) == pytest.approx(result.points[1].balanced_interval[0])
    assert value("medrobust_audit_clean_accuracy_lower", _labels("demo-resnet50-attention")) == pytest.approx(wilson_interval(4, 8)[0])
    assert value("medrobust_audit_balanced_clean_accuracy_lower", _labels("demo-resnet50-attention")) == pytest.approx(
        result.balanced_clean_interval[0])
    short = {"task": "demo", "version": "1"}
    assert value("medrobust_audit_degenerate", {**short, "model": "demo-resnet50-attention"}) == 1
    assert value("medrobust_audit_degenerate", {**short, "model": "demo-resnet50-baseline"}) == 0
    assert value("medrobust_audit_samples", {**short, "model": "demo-resnet50-attention", "attack": "linf_pgd"}) == 8
    # Nor is a degenerate model's difference with its baseline an attention gain.
    assert "medrobust_audit_attention_gain" not in _series(registry)


def test_only_served_versions_are_exported(empty_store):
    attentive, baseline = "demo-resnet50-attention", "demo-resnet50-baseline"
    for result, attack in (
        (make_result(model=attentive, version=1), "linf_pgd"),
        (make_result(model=attentive, version=1), "fgsm"),
        (make_result(model=attentive, version=2), "linf_pgd"),
        (make_result(model=baseline, version=1, attention=False, robust=(0.75, 0.25, 0.0)), "linf_pgd"),
    ):
        _stored(empty_store, AuditResult(**{**result.__dict__, "attack": attack}), attack=attack)
    now = {"served": [(attentive, (1, 2)), (baseline, (1,))]}
    # Read at each scrape: the test changes what is served between scrapes.
    registry = registered(empty_store, served=lambda: served(*now["served"])())  # noqa: PLW0108

    def versions() -> dict[str, set[tuple[str, str]]]:
        found: dict[str, set[tuple[str, str]]] = {}
        for name, series in _series(registry).items():
            for labels in series:
                if "version" in labels:
                    found.setdefault(name, set()).add((labels["model"], labels["version"]))
        return found

    # (a running job's progress has series only while one runs)
    versioned = {name for name in NAMES if "version" in NAMES[name] and name != "medrobust_audit_progress_ratio"}
    assert set(versions()) == versioned
    assert all(pairs == {(attentive, "1"), (attentive, "2"), (baseline, "1")} for pairs in versions().values())
    gain = {"task": "demo", "backbone": "resnet50", "attack": "linf_pgd", "epsilon": "0.01"}
    assert registry.get_sample_value("medrobust_audit_attention_gain", gain) == pytest.approx(0.25)

    now["served"] = [(attentive, (2,)), (baseline, (1,))]  # version 1 of the attentive model rolled back
    assert set(versions()) == versioned
    assert all(pairs == {(attentive, "2"), (baseline, "1")} for pairs in versions().values()), versions()
    assert registry.get_sample_value("medrobust_audit_attention_gain", gain) == pytest.approx(0.25)  # v2 and the baseline

    now["served"] = [(attentive, (2,))]  # the baseline is no longer served at all
    assert all(pairs == {(attentive, "2")} for pairs in versions().values()), versions()
    assert registry.get_sample_value("medrobust_audit_attention_gain", gain) is None  # no pair left
    for name in ("medrobust_audit_duration_seconds", "medrobust_audit_last_success_timestamp_seconds"):
        assert registry.get_sample_value(name, {"model": baseline}) is None  # it must not look stale
        assert registry.get_sample_value(name, {"model": attentive}) is not None
    assert registry.get_sample_value("medrobust_audit_runs_total", {"model": baseline, "status": "succeeded"}) == 1

    now["served"] = []
    assert set(versions()) == set()


def test_a_served_list_that_fails_leaves_every_stored_version(empty_store, caplog):
    _stored(empty_store, make_result(version=1))

    def unreachable():
        raise ConnectionError("TF Serving unreachable")

    registry = registered(empty_store, served=unreachable)
    point = {**_labels("demo-resnet50-attention"), "attack": "linf_pgd", "epsilon": "0.01"}
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", point) == 0.5
    assert "TF Serving unreachable" in caplog.text


@pytest.mark.parametrize(
    ("baseline_changes", "baseline_config"),
    [
        ({"audit_set": EIGHT}, {"steps": 20}),  # another audit set
        ({}, {"steps": 10}),  # other steps
        ({"epsilons": ("0", "0.01", "0.04")}, {"steps": 20}),  # another grid
        ({"sanity": (SanityCheck("gradient_consistent", False, "vjp lies"),)}, {"steps": 20}),  # Square's figures
    ],
    ids=["audit-set", "steps", "grid", "black-box-only"],
)
def test_the_attention_gain_pairs_only_comparable_runs(empty_store, baseline_changes, baseline_config):
    registry = registered(empty_store)
    _stored(empty_store, make_result(model="demo-resnet50-attention"))
    comparable_baseline = make_result(model="demo-resnet50-baseline", attention=False, robust=(0.75, 0.25, 0.0))
    _stored(empty_store, comparable_baseline)
    assert len(_series(registry)["medrobust_audit_attention_gain"]) == 3
    # A newer baseline run that cannot be compared withdraws the gain rather than leave it stale.
    other = make_result(model="demo-resnet50-baseline", attention=False, robust=(0.75, 0.25, 0.0), **baseline_changes)
    _stored(empty_store, other, config=baseline_config)
    assert "medrobust_audit_attention_gain" not in _series(registry)


def test_sanity_checks_are_published_by_version_and_attack_whatever_their_names(empty_store):
    registry = registered(empty_store)
    checks = (SanityCheck("attack_made_progress", False, "no loss decrease"), SanityCheck("independent_epsilons_consistent", True, "ok"))
    _stored(empty_store, make_result(sanity=checks))
    labels = {"model": "demo-resnet50-attention", "version": "1", "attack": "linf_pgd"}
    value = registry.get_sample_value
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "attack_made_progress"}) == 1
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "independent_epsilons_consistent"}) == 0
    # The next run has other checks: the one it no longer has is withdrawn, not left failing.
    _stored(empty_store, make_result(sanity=(SanityCheck("degenerate_predictions", True, "ok"),)))
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "attack_made_progress"}) is None
    assert value("medrobust_audit_sanity_check_failed", {**labels, "check": "degenerate_predictions"}) == 0


def test_the_newest_run_of_a_version_and_attack_is_exported(empty_store):
    registry = registered(empty_store)
    _stored(empty_store, make_result(robust=(0.75, 0.5, 0.25)))
    _stored(empty_store, make_result(robust=(0.75, 0.125, 0.0)))
    failed = empty_store.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded",
                                   attack="linf_pgd", config={})
    empty_store.fail_run(failed, "boom")  # a failed run after them changes no figure
    point = {**_labels("demo-resnet50-attention"), "attack": "linf_pgd", "epsilon": "0.01"}
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", point) == 0.125


def test_a_first_schema_database_flags_its_one_class_model(tmp_path):
    path = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(OLD_SCHEMA_DUMP.read_text())
    store = AuditStore(f"sqlite:///{path}")
    registry = registered(store)
    value = registry.get_sample_value
    assert value("medrobust_audit_degenerate", {"task": "demo", "model": "demo-resnet50-baseline", "version": "1"}) == 1
    point = {**_labels("demo-resnet50-baseline", attention=False), "attack": "linf_pgd", "epsilon": "0.02"}
    assert value("medrobust_audit_worst_class_robust_accuracy", point) == 0.0
    assert value("medrobust_audit_robustness_score", {**_labels("demo-resnet50-attention"), "attack": "linf_pgd"}) == pytest.approx(0.375)
    store.close()


def test_the_metrics_drop_a_version_taken_out_of_the_repository(empty_store, tmp_path):
    from service.embedded import EmbeddedPredictor

    repo = tmp_path / "repo"
    model = "demo-resnet50-attention"
    for version in (1, 2):  # what the index reads: the version folders and the newest card
        card = repo / model / str(version) / "assets.extra" / "model_card.json"
        card.parent.mkdir(parents=True)
        card.write_text(json.dumps(CARD))
        _stored(empty_store, make_result(model=model, version=version))
    predictor = EmbeddedPredictor(repo, poll_seconds=0)
    registry = registered(empty_store, served=predictor.list_models)
    point = {**_labels(model), "attack": "linf_pgd", "epsilon": "0.01"}
    try:
        assert registry.get_sample_value("medrobust_audit_robust_accuracy", {**point, "version": "1"}) == 0.5
        shutil.rmtree(repo / model / "1")
        assert registry.get_sample_value("medrobust_audit_robust_accuracy", {**point, "version": "1"}) is None
        assert registry.get_sample_value("medrobust_audit_robust_accuracy", {**point, "version": "2"}) == 0.5
    finally:
        predictor.close()


def test_the_gunicorn_masters_collector_reads_the_store_and_the_mounted_repository(empty_store, tmp_path):
    """`medrobust serve`'s /metrics is served by a master that loads no model: the served versions
    come from the repository folders, the audit sets from the same variables as the workers'."""
    from medrobust.compose import register_master_audit_collector
    from training.contract.config import ServiceConfig

    repo = tmp_path / "repo"
    for model, task in (("demo-resnet50-attention", "demo"), ("chest-resnet50-baseline", "chest")):
        card = repo / model / "1" / "assets.extra" / "model_card.json"
        card.parent.mkdir(parents=True)
        card.write_text(json.dumps({**CARD, "task": task}))
    _stored(empty_store, make_result(version=1))
    _stored(empty_store, make_result(version=2))  # a version no longer in the repository
    sets = tmp_path / "sets.toml"
    sets.write_text('[tasks]\ndemo = "synthetic:30"\n')
    config = ServiceConfig(model_repo=repo, database_url=empty_store.engine.url.render_as_string(hide_password=False),
                           audit_sets=sets)
    registry = CollectorRegistry()
    register_master_audit_collector(config, registry)
    point = {**_labels("demo-resnet50-attention"), "attack": "linf_pgd", "epsilon": "0.01"}
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", point) == 0.5
    assert registry.get_sample_value("medrobust_audit_robust_accuracy", {**point, "version": "2"}) is None
    assert registry.get_sample_value("medrobust_audit_unauditable", {"model": "chest-resnet50-baseline", "task": "chest"}) == 1
    assert registry.get_sample_value("medrobust_audit_unauditable", {"model": "demo-resnet50-attention", "task": "demo"}) is None


def test_the_queue_and_the_running_jobs_progress_are_read_at_each_scrape(empty_store):
    registry = registered(empty_store)
    assert registry.get_sample_value("medrobust_audit_jobs_queued") == 0
    assert registry.get_sample_value("medrobust_audit_oldest_queued_job_age_seconds") == 0
    card = {"task": "demo", "backbone": "resnet50", "attention": True}
    for version in (1, 2, 3):
        empty_store.enqueue(model="demo-resnet50-attention", version=version, card=card, backend="embedded",
                            attack="linf_pgd", config={"steps": version})
    job = empty_store.claim(60.0)
    empty_store.report_progress(job.run_id, 30, 120, 12.0)
    assert registry.get_sample_value("medrobust_audit_jobs_queued") == 2
    assert registry.get_sample_value("medrobust_audit_jobs_running") == 1
    assert registry.get_sample_value("medrobust_audit_oldest_queued_job_age_seconds") >= 0
    progress = {"model": job.model, "version": str(job.version), "attack": "linf_pgd"}
    assert registry.get_sample_value("medrobust_audit_progress_ratio", progress) == 0.25
    empty_store.fail_run(job.run_id, "test: given up")
    assert registry.get_sample_value("medrobust_audit_jobs_running") == 0
    assert registry.get_sample_value("medrobust_audit_jobs_failed") == 1
    assert registry.get_sample_value("medrobust_audit_progress_ratio", progress) is None


MASTER_IMPORTS = """
import sys
from prometheus_client import CollectorRegistry
from medrobust.compose import import_master_audit_collector, register_master_audit_collector
from training.contract.config import ServiceConfig

config = ServiceConfig(model_repo=sys.argv[1], database_url=sys.argv[2])
import_master_audit_collector(config.database_url)
before = set(sys.modules)
register_master_audit_collector(config, CollectorRegistry())
print(sorted(set(sys.modules) - before))
"""


def test_the_masters_waiting_thread_imports_nothing_gunicorns_workers_could_inherit_half_done(empty_store, tmp_path):
    """gunicorn forks its workers while the master's thread waits for the store: a module that thread
    was importing at the fork stays locked in the worker, which hung at boot on it (seen in CI). So
    everything the thread runs is imported before it starts; a fresh interpreter shows nothing is left."""
    import subprocess
    import sys

    url = empty_store.engine.url.render_as_string(hide_password=False)
    done = subprocess.run([sys.executable, "-c", MASTER_IMPORTS, str(tmp_path), url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
