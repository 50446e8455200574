"""The audit's Prometheus metrics: names and labels fixed by the dashboards and alerts.

Declared against a `registry` (a fresh one per test); `restore(store)` fills them from the store so
a restarted worker does not blank the dashboards, and `record(...)` updates them after each run.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

from audit.sanity import CHECKS

MODEL_LABELS = ("task", "model", "backbone", "attention", "version")


def _attention(value: bool) -> str:
    return "true" if value else "false"


RUN_STATUSES = ("succeeded", "failed")

class AuditMetrics:
    """Every audit metric, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._lock = threading.Lock()
        self.robust_accuracy = Gauge(
            "medrobust_audit_robust_accuracy", "Robust accuracy of a served model version under an attack at an epsilon",
            (*MODEL_LABELS, "attack", "epsilon"), registry=registry,
        )
        self.clean_accuracy = Gauge(
            "medrobust_audit_clean_accuracy", "Clean accuracy of a served model version on its audit set",
            MODEL_LABELS, registry=registry,
        )
        self.robustness_score = Gauge(
            "medrobust_audit_robustness_score", "Mean robust accuracy over the epsilon grid",
            (*MODEL_LABELS, "attack"), registry=registry,
        )
        self.attention_gain = Gauge(
            "medrobust_audit_attention_gain",
            "Robust accuracy of the attentive model minus the baseline's (latest runs, same task and backbone)",
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
            "medrobust_audit_sanity_check_failed", "1 when the model's latest audit failed this sanity check, else 0",
            ("model", "check"), registry=registry,
        )
        self._latest: dict[tuple[str, str], object] = {}  # (model, attack) -> newest succeeded run record
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
        """The figures of a succeeded run (a store RunRecord with points and sanity)."""
        labels = {
            "task": run.task, "model": run.model, "backbone": run.backbone,
            "attention": _attention(run.attention), "version": str(run.version),
        }
        with self._lock:
            for p in run.points:
                self.robust_accuracy.labels(**labels, attack=run.attack, epsilon=p["epsilon"]).set(p["robust_accuracy"])
            self.clean_accuracy.labels(**labels).set(run.clean_accuracy)
            self.robustness_score.labels(**labels, attack=run.attack).set(run.robustness_score)
            if run.duration_seconds is not None:
                self.duration.labels(model=run.model).set(run.duration_seconds)
            finished = run.finished_at or 0.0
            if finished >= self._last_success_at.get(run.model, 0.0):
                self._last_success_at[run.model] = finished
                self.last_success.labels(model=run.model).set(finished)
                passed = {s["check"]: s["passed"] for s in run.sanity}
                for check in CHECKS:
                    if check in passed:
                        self.sanity_failed.labels(model=run.model, check=check).set(0 if passed[check] else 1)
            key = (run.model, run.attack)
            current = self._latest.get(key)
            if current is None or current.id <= run.id:
                self._latest[key] = run
            self._publish_gain(run.task, run.backbone, run.attack)

    def _publish_gain(self, task: str, backbone: str, attack: str) -> None:
        pair = {
            r.attention: r for (_, a), r in self._latest.items() if a == attack and r.task == task and r.backbone == backbone
        }
        if True not in pair or False not in pair:
            return
        base = {p["epsilon"]: p["robust_accuracy"] for p in pair[False].points}
        for p in pair[True].points:
            if p["epsilon"] in base:
                self.attention_gain.labels(task=task, backbone=backbone, attack=attack, epsilon=p["epsilon"]).set(
                    p["robust_accuracy"] - base[p["epsilon"]]
                )
