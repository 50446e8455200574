"""The audit's Prometheus metrics: names and labels fixed by the dashboards and alerts.

Declared against a `registry` (a fresh one per test); `restore(store)` fills them from the store so
a restarted worker does not blank the dashboards, `publish(run)` updates them after each run, and
`retain(served)` drops the series of model versions no longer served.

Per epsilon, beside the plain robust accuracy (a one-class model keeps its class's share of it at
every epsilon), the balanced and worst-class figures and the Wilson lower bound are published, so
that neither alerts nor dashboards need to read the plain mean alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from audit.store import comparable

MODEL_LABELS = ("task", "model", "backbone", "attention", "version")
POINT_LABELS = (*MODEL_LABELS, "attack", "epsilon")
RUN_STATUSES = ("succeeded", "failed")


def _attention(value: bool) -> str:
    return "true" if value else "false"


class AuditMetrics:
    """Every audit metric, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._lock = threading.Lock()
        self.robust_accuracy = Gauge(
            "medrobust_audit_robust_accuracy", "Robust accuracy of a served model version under an attack at an epsilon",
            POINT_LABELS, registry=registry,
        )
        self.balanced_robust_accuracy = Gauge(
            "medrobust_audit_balanced_robust_accuracy", "Mean over classes of the per-class robust accuracy",
            POINT_LABELS, registry=registry,
        )
        self.worst_class_robust_accuracy = Gauge(
            "medrobust_audit_worst_class_robust_accuracy", "Lowest per-class robust accuracy (0 for a one-class model)",
            POINT_LABELS, registry=registry,
        )
        self.robust_accuracy_lower = Gauge(
            "medrobust_audit_robust_accuracy_lower", "Lower bound of the 95% Wilson score interval of robust accuracy",
            POINT_LABELS, registry=registry,
        )
        self.class_robust_accuracy = Gauge(
            "medrobust_audit_class_robust_accuracy", "Robust accuracy on the audit set's images of one class",
            (*POINT_LABELS, "class"), registry=registry,
        )
        self.clean_accuracy = Gauge(
            "medrobust_audit_clean_accuracy", "Clean accuracy of a served model version on its audit set",
            MODEL_LABELS, registry=registry,
        )
        self.balanced_clean_accuracy = Gauge(
            "medrobust_audit_balanced_clean_accuracy", "Mean over classes of the per-class clean accuracy",
            MODEL_LABELS, registry=registry,
        )
        self.robustness_score = Gauge(
            "medrobust_audit_robustness_score", "Mean robust accuracy over the grid's non-zero epsilons",
            (*MODEL_LABELS, "attack"), registry=registry,
        )
        self.samples = Gauge(
            "medrobust_audit_samples", "Images in the audit set the figures are counted over",
            ("task", "model", "version", "attack"), registry=registry,
        )
        self.degenerate = Gauge(
            "medrobust_audit_degenerate",
            "1 when the model version answers one class for at least 95% of its audit set (its robust figures "
            "then measure that class's share, not robustness), else 0",
            ("task", "model", "version"), registry=registry,
        )
        self.attention_gain = Gauge(
            "medrobust_audit_attention_gain",
            "Robust accuracy of the attentive model minus the baseline's (latest comparable runs, same task and backbone)",
            ("task", "backbone", "attack", "epsilon"), registry=registry,
        )
        self.runs = Counter(
            "medrobust_audit_runs", "Finished audit runs by outcome", ("model", "status"), registry=registry,
        )
        self.duration = Gauge(
            "medrobust_audit_duration_seconds", "Wall time of the model's latest finished audit run", ("model",),
            registry=registry,
        )
        self.last_success = Gauge(
            "medrobust_audit_last_success_timestamp_seconds", "Unix time the model's latest successful audit finished",
            ("model",), registry=registry,
        )
        self.sanity_failed = Gauge(
            "medrobust_audit_sanity_check_failed",
            "1 when the latest audit of the model version under the attack failed this sanity check, else 0",
            ("model", "version", "attack", "check"), registry=registry,
        )
        # (model, version, attack) -> the newest published run, and the series it set.
        self._runs: dict[tuple[str, int, str], Any] = {}
        self._series: dict[tuple[str, int, str], set[tuple[Gauge, tuple[str, ...]]]] = {}
        self._gains: dict[tuple[str, str, str], set[tuple[str, ...]]] = {}  # (task, backbone, attack) -> gain labels
        self._last_success_at: dict[str, float] = {}

    def restore(self, store) -> None:
        """Set every metric from the store (called once at start)."""
        for model, _status in store.run_counts():
            self.declare(model)
        for (model, status), count in store.run_counts().items():
            self.runs.labels(model=model, status=status).inc(count)
        for run in store.latest_succeeded():
            self.publish(run)

    def declare(self, model: str) -> None:
        """Create a model's run counters at zero, so Prometheus sees its first run as an increase."""
        for status in RUN_STATUSES:
            self.runs.labels(model=model, status=status)

    def count(self, model: str, status: str, duration_seconds: float | None = None) -> None:
        """A run finished with `status` ("succeeded" or "failed")."""
        self.runs.labels(model=model, status=status).inc()
        if duration_seconds is not None:
            self.duration.labels(model=model).set(duration_seconds)

    def publish(self, run) -> None:
        """The figures of a succeeded run (a store RunRecord with points and sanity).

        An older run of the same model version and attack than one already published is ignored;
        series the previous run set and this one does not (an epsilon, a class, a check) are removed.
        """
        key = (run.model, int(run.version), run.attack)
        with self._lock:
            current = self._runs.get(key)
            if current is not None and current.id > run.id:
                return
            series = self._run_series(run)
            for gauge, labels, value in series:
                gauge.labels(*labels).set(value)
            published = {(gauge, labels) for gauge, labels, _ in series}
            self._remove(self._series.get(key, set()) - published)
            self._runs[key], self._series[key] = run, published
            if run.duration_seconds is not None:
                self.duration.labels(model=run.model).set(run.duration_seconds)
            finished = run.finished_at or 0.0
            if finished >= self._last_success_at.get(run.model, 0.0):
                self._last_success_at[run.model] = finished
                self.last_success.labels(model=run.model).set(finished)
            self._publish_gain(run.task, run.backbone, run.attack)

    def retain(self, served: Mapping[str, set[int] | frozenset[int] | tuple[int, ...]]) -> None:
        """Keep only the series of served model versions (`{model: versions}`); remove every other one.

        A model missing from `served` loses all its versioned series, and its duration and
        last-success gauges too (an unserved model must not look stale); run counters are kept.
        """
        keep = {model: {int(v) for v in versions} for model, versions in served.items()}
        with self._lock:
            gone = [key for key in self._runs if key[1] not in keep.get(key[0], set())]
            for key in gone:
                run = self._runs.pop(key)
                self._remove(self._series.pop(key))
                self._publish_gain(run.task, run.backbone, run.attack)
            for model in [m for m in self._last_success_at if m not in keep]:
                del self._last_success_at[model]
                for gauge in (self.duration, self.last_success):
                    self._remove({(gauge, (model,))})

    # -- helpers (called with the lock held) -------------------------------------------------------
    def _run_series(self, run) -> list[tuple[Gauge, tuple[str, ...], float]]:
        """(gauge, label values, value) of every versioned series of a run."""
        model = (run.task, run.model, run.backbone, _attention(run.attention), str(run.version))
        series: list[tuple[Gauge, tuple[str, ...], float]] = []
        for p in run.points:
            labels = (*model, run.attack, p["epsilon"])
            figures = (
                (self.robust_accuracy, p["robust_accuracy"]),
                (self.balanced_robust_accuracy, p["balanced_robust_accuracy"]),
                (self.worst_class_robust_accuracy, p.get("worst_class_robust_accuracy")),
                (self.robust_accuracy_lower, p.get("robust_accuracy_lower")),
            )
            series += [(gauge, labels, value) for gauge, value in figures if value is not None]
            series += [(self.class_robust_accuracy, (*labels, name), value) for name, value in (p["per_class"] or {}).items()]
        for gauge, value in ((self.clean_accuracy, run.clean_accuracy), (self.balanced_clean_accuracy, run.balanced_clean_accuracy)):
            if value is not None:
                series.append((gauge, model, value))
        series.append((self.robustness_score, (*model, run.attack), run.robustness_score))
        short = (run.task, run.model, str(run.version))
        if run.audit_set_size is not None:
            series.append((self.samples, (*short, run.attack), run.audit_set_size))
        if run.degenerate is not None:
            series.append((self.degenerate, short, 1.0 if run.degenerate else 0.0))
        # Whatever checks the run has: their names are the sanity module's to choose.
        series += [
            (self.sanity_failed, (run.model, str(run.version), run.attack, s["check"]), 0.0 if s["passed"] else 1.0)
            for s in run.sanity
        ]
        return series

    @staticmethod
    def _remove(series) -> None:
        for gauge, labels in series:
            try:
                gauge.remove(*labels)
            except KeyError:  # shared by another attack's run of the same version and removed with it
                pass

    def _publish_gain(self, task: str, backbone: str, attack: str) -> None:
        """Attentive minus baseline per epsilon, from the newest published run of each, when comparable.

        Runs on different audit sets, steps or grids are not paired (their difference would be
        noise or protocol, not attention), nor is a degenerate model (its figures are a class share).
        """
        newest: dict[bool, Any] = {}
        for (_, _, a), r in self._runs.items():
            if a == attack and r.task == task and r.backbone == backbone:
                if r.attention not in newest or newest[r.attention].id < r.id:
                    newest[r.attention] = r
        labels: set[tuple[str, ...]] = set()
        if len(newest) == 2 and comparable(newest[True], newest[False]) and not (
            newest[True].degenerate or newest[False].degenerate
        ):
            base = {p["epsilon"]: p["robust_accuracy"] for p in newest[False].points}
            for p in newest[True].points:
                if p["epsilon"] in base:
                    label = (task, backbone, attack, p["epsilon"])
                    self.attention_gain.labels(*label).set(p["robust_accuracy"] - base[p["epsilon"]])
                    labels.add(label)
        self._remove({(self.attention_gain, label) for label in self._gains.get((task, backbone, attack), set()) - labels})
        self._gains[(task, backbone, attack)] = labels
