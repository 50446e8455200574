"""The audit's Prometheus metrics, read from the store at each scrape: names and labels fixed by the
dashboards and alerts.

`AuditCollector` is a prometheus_client custom collector: `collect()` reads the store every time
Prometheus scrapes and keeps nothing between scrapes, so any process with a metrics port and the
store's URL (the front end, every audit worker) exports the same figures, a fresh process exports
them at once, and nothing can drift from the database. Each family is one method; a new family (the
job queue's) is one more method named in `FAMILIES`.

Per epsilon, beside the plain robust accuracy (a one-class model keeps its class's share of it at
every epsilon), the balanced, worst-class and per-class figures are published, each with the lower
bound of its 95% interval (Wilson for the mean, each class and the worst class; the seeded
stratified bootstrap for the balanced figure), so that neither alerts nor dashboards need to read
a point estimate alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.results import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, DEGENERATE_SHARE
from audit.store import AuditStore, RunRecord, comparable

log = logging.getLogger(__name__)

MODEL_LABELS = ("task", "model", "backbone", "attention", "version")
POINT_LABELS = (*MODEL_LABELS, "attack", "epsilon")
SHORT_LABELS = ("task", "model", "version")
RUN_STATUSES = ("succeeded", "failed")

# The served models now: objects with `name`, `versions` and `card` (the predictor's ModelInfo, the repository's RepoModel).
Served = Callable[[], Iterable[Any]]
# Of the served (name, card) pairs, the (model, task) of those no audit set covers.
Unauditable = Callable[[Iterable[tuple[str, Mapping[str, Any]]]], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class Snapshot:
    """What one scrape read from the store (and the served models), shared by every family."""

    runs: tuple[RunRecord, ...]  # the newest succeeded run of every served (model, version, attack)
    served: Mapping[str, Collection[int]] | None  # model -> versions; None: unknown (every stored version exported)
    unauditable: tuple[tuple[str, str], ...] = ()


def _attention(value: bool) -> str:
    return "true" if value else "false"


def _model_labels(run: RunRecord) -> tuple[str, ...]:
    return (run.task, run.model, run.backbone, _attention(run.attention), str(run.version))


def _gauge(name: str, documentation: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class AuditCollector(Collector):
    """Every `medrobust_audit_*` family, from `store` at each scrape.

    `served` limits the versioned series to the versions served now (a version rolled back must not
    keep alerting); `unauditable` names the served models whose task has no audit set.
    """

    FAMILIES = ("points", "model_figures", "attention_gain", "sanity", "runs", "run_times", "unauditable", "queue", "progress")

    def __init__(self, store: AuditStore, *, served: Served | None = None, unauditable: Unauditable | None = None) -> None:
        self.store = store
        self._served = served
        self._unauditable = unauditable

    def describe(self) -> list[Metric]:
        # Registration asks for the names; answering without samples keeps it off the database.
        return [family for name in self.FAMILIES for family in getattr(self, name)(None)]

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        for name in self.FAMILIES:
            yield from getattr(self, name)(snapshot)

    def snapshot(self) -> Snapshot:
        """One read of the store and of the served models, for every family of this scrape."""
        served: dict[str, frozenset[int]] | None = None
        unauditable: tuple[tuple[str, str], ...] = ()
        if self._served is not None:
            try:
                models = tuple(self._served())
            except Exception as exc:  # noqa: BLE001  (the served list is a filter: without it the figures still hold)
                log.warning("audit metrics: the served models could not be listed (%s): every stored version exported", exc)
            else:
                served = {m.name: frozenset(int(v) for v in m.versions) for m in models}
                if self._unauditable is not None:
                    unauditable = tuple(sorted(set(self._unauditable((m.name, m.card) for m in models))))
        runs = self.store.latest_succeeded()
        if served is not None:
            runs = tuple(r for r in runs if int(r.version) in served.get(r.model, ()))
        return Snapshot(tuple(runs), served, unauditable)

    # -- one method per family group; each answers empty families for `None` (describe) ------------
    def points(self, snapshot: Snapshot | None) -> list[Metric]:
        """Per model version, attack and epsilon."""
        families = {
            "robust_accuracy": _gauge(
                "medrobust_audit_robust_accuracy", "Robust accuracy of a served model version under an attack at an epsilon",
                POINT_LABELS,
            ),
            "balanced_robust_accuracy": _gauge(
                "medrobust_audit_balanced_robust_accuracy", "Mean over classes of the per-class robust accuracy", POINT_LABELS,
            ),
            "worst_class_robust_accuracy": _gauge(
                "medrobust_audit_worst_class_robust_accuracy", "Lowest per-class robust accuracy (0 for a one-class model)",
                POINT_LABELS,
            ),
            "robust_accuracy_lower": _gauge(
                "medrobust_audit_robust_accuracy_lower", "Lower bound of the 95% Wilson score interval of robust accuracy",
                POINT_LABELS,
            ),
            "worst_class_robust_accuracy_lower": _gauge(
                "medrobust_audit_worst_class_robust_accuracy_lower",
                "Lower bound of the 95% Wilson score interval of the worst class's robust accuracy (the class with the "
                "lowest figure), over that class's images",
                POINT_LABELS,
            ),
            "balanced_robust_accuracy_lower": _gauge(
                "medrobust_audit_balanced_robust_accuracy_lower",
                "Lower bound of the 95% interval of balanced robust accuracy (percentile bootstrap over images, "
                f"stratified by class, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})",
                POINT_LABELS,
            ),
        }
        per_class = _gauge(
            "medrobust_audit_class_robust_accuracy", "Robust accuracy on the audit set's images of one class",
            (*POINT_LABELS, "class"),
        )
        per_class_lower = _gauge(
            "medrobust_audit_class_robust_accuracy_lower",
            "Lower bound of the 95% Wilson score interval of one class's robust accuracy, over its images",
            (*POINT_LABELS, "class"),
        )
        for run in snapshot.runs if snapshot else ():
            for p in run.points:
                labels = [*_model_labels(run), run.attack, p["epsilon"]]
                for key, family in families.items():
                    if p.get(key) is not None:
                        family.add_metric(labels, p[key])
                for name, value in (p["per_class"] or {}).items():
                    per_class.add_metric([*labels, name], value)
                for name, (lower, _upper) in (p.get("class_intervals") or {}).items():
                    per_class_lower.add_metric([*labels, name], lower)
        return [*families.values(), per_class, per_class_lower]

    def model_figures(self, snapshot: Snapshot | None) -> list[Metric]:
        """Per model version (and attack): clean accuracy, score, audit set size, degenerate."""
        clean = _gauge("medrobust_audit_clean_accuracy", "Clean accuracy of a served model version on its audit set", MODEL_LABELS)
        balanced = _gauge(
            "medrobust_audit_balanced_clean_accuracy", "Mean over classes of the per-class clean accuracy", MODEL_LABELS,
        )
        clean_lower = _gauge(
            "medrobust_audit_clean_accuracy_lower", "Lower bound of the 95% Wilson score interval of clean accuracy",
            MODEL_LABELS,
        )
        balanced_lower = _gauge(
            "medrobust_audit_balanced_clean_accuracy_lower",
            "Lower bound of the 95% interval of balanced clean accuracy (percentile bootstrap over images, stratified "
            f"by class, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})",
            MODEL_LABELS,
        )
        score = _gauge(
            "medrobust_audit_robustness_score", "Mean robust accuracy over the grid's non-zero epsilons",
            (*MODEL_LABELS, "attack"),
        )
        samples = _gauge(
            "medrobust_audit_samples", "Images in the audit set the figures are counted over", (*SHORT_LABELS, "attack"),
        )
        # The budget the version's figures under the attack were made with, as a label: "standard", or
        # "reduced (25 iterations, 300 queries)". Dashboards join it onto the figures they show.
        budget = _gauge(
            "medrobust_audit_budget_info", "1, labelled with the budget of the latest audit of the version under the attack",
            (*SHORT_LABELS, "attack", "budget"),
        )
        degenerate = _gauge(
            "medrobust_audit_degenerate",
            f"1 when the model version answers one class for at least {DEGENERATE_SHARE:.0%} of its audit set, each true "
            "class weighted equally (its robust figures then measure that class's share, not robustness), else 0",
            SHORT_LABELS,
        )
        # Series without the attack label are shared by the version's runs of every attack: the newest sets them.
        shared: dict[tuple[str, ...], RunRecord] = {}
        for run in snapshot.runs if snapshot else ():
            labels = list(_model_labels(run))
            if run.robustness_score is not None:
                score.add_metric([*labels, run.attack], run.robustness_score)
            if run.audit_set_size is not None:
                samples.add_metric([run.task, run.model, str(run.version), run.attack], run.audit_set_size)
            budget.add_metric([run.task, run.model, str(run.version), run.attack, run.budget_label], 1.0)
            key: tuple[str, ...] = tuple(labels)
            if key not in shared or shared[key].id < run.id:
                shared[key] = run
        for shared_labels, run in shared.items():
            if run.clean_accuracy is not None:
                clean.add_metric(list(shared_labels), run.clean_accuracy)
            if run.balanced_clean_accuracy is not None:
                balanced.add_metric(list(shared_labels), run.balanced_clean_accuracy)
            if run.clean_accuracy_lower is not None:
                clean_lower.add_metric(list(shared_labels), run.clean_accuracy_lower)
            if run.balanced_clean_accuracy_lower is not None:
                balanced_lower.add_metric(list(shared_labels), run.balanced_clean_accuracy_lower)
        newest_degenerate: dict[tuple[str, str, str], RunRecord] = {}
        for run in shared.values():
            key = (run.task, run.model, str(run.version))
            if run.degenerate is not None and (key not in newest_degenerate or newest_degenerate[key].id < run.id):
                newest_degenerate[key] = run
        for key, run in newest_degenerate.items():
            degenerate.add_metric(list(key), 1.0 if run.degenerate else 0.0)
        return [clean, balanced, clean_lower, balanced_lower, score, samples, budget, degenerate]

    def attention_gain(self, snapshot: Snapshot | None) -> list[Metric]:
        """Attentive minus baseline per epsilon, from the newest run of each, when comparable.

        Runs on different audit sets, steps or grids are not paired (their difference would be
        noise or protocol, not attention), nor is a degenerate model (its figures are a class share).
        """
        gain = _gauge(
            "medrobust_audit_attention_gain",
            "Robust accuracy of the attentive model minus the baseline's (latest comparable runs, same task and backbone)",
            ("task", "backbone", "attack", "epsilon"),
        )
        newest: dict[tuple[str, str, str, bool], RunRecord] = {}
        for run in snapshot.runs if snapshot else ():
            key = (run.task, run.backbone, run.attack, run.attention)
            if key not in newest or newest[key].id < run.id:
                newest[key] = run
        for (task, backbone, attack, attention), attentive in newest.items():
            baseline = newest.get((task, backbone, attack, False))
            if not attention or baseline is None or not comparable(attentive, baseline):
                continue
            # A black-box-only run's figures are Square's, not its attack's: no pair with a run that was attacked.
            if attentive.degenerate or baseline.degenerate or attentive.black_box_only or baseline.black_box_only:
                continue
            base = {p["epsilon"]: p["robust_accuracy"] for p in baseline.points}
            for p in attentive.points:
                if p["epsilon"] in base:
                    gain.add_metric([task, backbone, attack, p["epsilon"]], p["robust_accuracy"] - base[p["epsilon"]])
        return [gain]

    def sanity(self, snapshot: Snapshot | None) -> list[Metric]:
        """Whatever checks each latest run has: their names are the sanity module's to choose."""
        failed = _gauge(
            "medrobust_audit_sanity_check_failed",
            "1 when the latest audit of the model version under the attack failed this sanity check, else 0",
            ("model", "version", "attack", "check"),
        )
        for run in snapshot.runs if snapshot else ():
            for s in run.sanity:
                failed.add_metric([run.model, str(run.version), run.attack, s["check"]], 0.0 if s["passed"] else 1.0)
        return [failed]

    def runs(self, snapshot: Snapshot | None) -> list[Metric]:
        """Finished runs by outcome, counted in the store; every served model's at zero until its first."""
        counter = CounterMetricFamily("medrobust_audit_runs", "Finished audit runs by outcome", labels=["model", "status"])
        if snapshot is None:
            return [counter]
        counts = dict(self.store.run_counts())
        # Prometheus cannot see a series' first value as an increase: a served model's counters exist at 0.
        for model in snapshot.served or ():
            for status in RUN_STATUSES:
                counts.setdefault((model, status), 0)
        for (model, status), count in sorted(counts.items()):
            counter.add_metric([model, status], count)
        return [counter]

    def run_times(self, snapshot: Snapshot | None) -> list[Metric]:
        """Per model: the latest run's wall time and the latest success (only served models: an unserved one must not look stale)."""
        duration = _gauge("medrobust_audit_duration_seconds", "Wall time of the model's latest finished audit run", ("model",))
        last = _gauge(
            "medrobust_audit_last_success_timestamp_seconds", "Unix time the model's latest successful audit finished",
            ("model",),
        )
        if snapshot is None:
            return [duration, last]
        for model, (seconds, succeeded_at) in sorted(self.store.run_times().items()):
            if snapshot.served is not None and model not in snapshot.served:
                continue
            if seconds is not None:
                duration.add_metric([model], seconds)
            if succeeded_at is not None:
                last.add_metric([model], succeeded_at)
        return [duration, last]

    def unauditable(self, snapshot: Snapshot | None) -> list[Metric]:
        """1 per served model whose task has no audit set: it is never audited until one is named."""
        family = _gauge(
            "medrobust_audit_unauditable",
            "1 for a served model whose task has no audit set (name one in the audit-sets file): it is not audited",
            ("model", "task"),
        )
        for model, task in snapshot.unauditable if snapshot else ():
            family.add_metric([model, task], 1.0)
        return [family]


    def queue(self, snapshot: Snapshot | None) -> list[Metric]:
        """The job queue: queued and running jobs, failed runs, and the oldest queued job's wait
        (what an autoscaler of workers reads: `medrobust_audit_jobs_queued`)."""
        queued = _gauge("medrobust_audit_jobs_queued", "Audit jobs waiting for a worker", ())
        running = _gauge("medrobust_audit_jobs_running", "Audit jobs a worker holds the lease of", ())
        failed = _gauge("medrobust_audit_jobs_failed", "Audit runs that ended failed (after their last attempt)", ())
        oldest = _gauge(
            "medrobust_audit_oldest_queued_job_age_seconds", "How long the oldest queued audit job has waited (0: none queued)", (),
        )
        if snapshot is None:
            return [queued, running, failed, oldest]
        stats = self.store.queue_stats()
        queued.add_metric([], stats.queued)
        running.add_metric([], stats.running)
        failed.add_metric([], stats.failed)
        oldest.add_metric([], stats.oldest_queued_age_seconds or 0.0)
        return [queued, running, failed, oldest]

    def progress(self, snapshot: Snapshot | None) -> list[Metric]:
        """Per running run: the share of its images x epsilons done (0 until its worker has counted them)."""
        family = _gauge(
            "medrobust_audit_progress_ratio", "Share of a running audit's images x epsilons done", ("model", "version", "attack"),
        )
        if snapshot is None:
            return [family]
        for model, version, attack, done, total in self.store.running_progress():
            family.add_metric([model, str(version), attack], done / total if total else 0.0)
        return [family]


def metric_families(collector_class: type[AuditCollector] = AuditCollector) -> dict[str, tuple[str, ...]]:
    """The exposed sample names a collector class exports, with their labels (for deploy checks and docs)."""
    found: dict[str, tuple[str, ...]] = {}
    probe: Any = collector_class(None)  # type: ignore[arg-type]  # describe() answers without reading the store
    for family in probe.describe():
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = tuple(getattr(family, "_labelnames", ()))
    return found
