"""Audit results built by hand, for tests of the audit store, its metrics, reports and pages.

`make_result` is a trained model's run on AUDIT_SET (its clean answers are the labels; image s1 is
fooled at 0.01); `one_class_result` is a model answering "a" to every image of EIGHT and never
fooled. OLD_SCHEMA_DUMP is a SQLite database as the first schema of the store wrote it.
"""

from __future__ import annotations

from pathlib import Path

from audit.results import AuditResult, AuditSet, EpsilonPoint, SampleOutcome, SanityCheck

CARD = {"task": "demo", "backbone": "resnet50", "attention": True}
OLD_SCHEMA_DUMP = Path(__file__).resolve().parent / "unit" / "audit_store_v1.sql"

AUDIT_SET = AuditSet("f" * 64, "d" * 64, "synthetic:240", 0, 64, ("s1", "s2", "s3", "s4"), (0, 1, 2, 0), ("a", "b", "c"))
# Eight images, half of them class a: a model answering "a" to every one keeps 0.5 at every epsilon.
EIGHT = AuditSet("e" * 64, "d" * 64, "synthetic:240", 0, 64, tuple(f"i{i}" for i in range(8)), (0, 0, 0, 0, 1, 1, 2, 2), ("a", "b", "c"))


def make_result(model="demo-resnet50-attention", version=1, attention=True, robust=(0.75, 0.5, 0.25), sanity_ok=True,
                **changes):
    """A run on AUDIT_SET whose clean answers are its labels (not degenerate); `changes` replace fields."""
    audit_set = changes.pop("audit_set", AUDIT_SET)
    epsilons = changes.pop("epsilons", ("0", "0.01", "0.02"))
    # Class a's figure as a count of four images where it is one (0.75: 3 of 4), so the intervals are there.
    points = tuple(
        EpsilonPoint(eps, acc, acc, {"a": acc}, 4, 1, acc, samples=len(audit_set),
                     class_counts={"a": (round(acc * 4), 4)} if (acc * 4).is_integer() else {})
        for eps, acc in zip(epsilons, robust)
    )
    samples = tuple(
        SampleOutcome(s, label, label, "0.01" if i == 0 else None, 1 if i == 0 else None)
        for i, (s, label) in enumerate(zip(audit_set.sample_ids, audit_set.labels))
    )
    sanity = (SanityCheck("gradients_nonzero", sanity_ok, "detail"), SanityCheck("robust_accuracy_monotone", True, "ok"))
    fields = dict(
        model=model, version=version, task="demo", backbone="resnet50", attention=attention, backend="embedded",
        attack="linf_pgd", steps=20, restarts=1, audit_set=audit_set, clean_accuracy=robust[0],
        balanced_clean_accuracy=robust[0], points=points, samples=samples, sanity=sanity, seconds=1.5,
    )
    return AuditResult(**{**fields, **changes})


def one_class_result(model="demo-resnet50-attention", version=1, attention=True, **changes):
    """A model that answers "a" to all of EIGHT and is never fooled: 0.5 everywhere, the most 'robust' of all."""
    points = tuple(
        EpsilonPoint(eps, 0.5, 1 / 3, {"a": 1.0, "b": 0.0, "c": 0.0}, 4, 0, 0.5, samples=8,
                     class_counts={"a": (4, 4), "b": (0, 2), "c": (0, 2)})
        for eps in ("0", "0.01", "0.02")
    )
    samples = tuple(SampleOutcome(s, label, 0, "0" if label else None, None) for s, label in zip(EIGHT.sample_ids, EIGHT.labels))
    fields = dict(
        model=model, version=version, task="demo", backbone="resnet50", attention=attention, backend="embedded",
        attack="linf_pgd", steps=20, restarts=1, audit_set=EIGHT, clean_accuracy=0.5, balanced_clean_accuracy=1 / 3,
        points=points, samples=samples, sanity=(SanityCheck("degenerate_predictions", False, "answers a to 8 of 8"),),
        seconds=2.0, seed=7, fooled_by={"apgd-ce": 0, "square": 0},
    )
    return AuditResult(**{**fields, **changes})



def audit_now(config, predictor, store, model: str):
    """Queue one job of `model` (the config's first attack) and carry it out here: (run_id, audit or None)."""
    from audit.jobs import Enqueuer
    from audit.runner import AuditRunner

    runner = AuditRunner(config, predictor, store)
    queued = Enqueuer(config, predictor, store, runner).enqueue(model, trigger="cli")
    outcome = runner.carry_out(store.claim(config.lease_seconds, run_ids=(queued.run_id,)))
    return queued.run_id, outcome.audit
