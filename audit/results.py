"""What an audit produces: small frozen values, independent of how they are stored or shown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AuditSet:
    """The images every run of a model attacks: seeded, class-stratified, fingerprinted."""

    fingerprint: str
    dataset_fingerprint: str
    dataset: str
    seed: int
    image_size: int
    sample_ids: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass(frozen=True)
class EpsilonPoint:
    """Robust accuracy at one epsilon, counted from the served model's predictions."""

    epsilon: str
    robust_accuracy: float
    balanced_robust_accuracy: float
    per_class: Mapping[str, float]
    attacked: int  # images still standing, attacked at this epsilon
    fooled: int  # of those, verified misclassified inside the ball
    noise_robust_accuracy: float | None = None  # the uniform-noise reference, when run


@dataclass(frozen=True)
class SampleOutcome:
    """One image: its label, the clean prediction and the smallest grid epsilon that fools it."""

    sample_id: str
    label: int
    clean_class: int
    fooled_at: str | None  # None: never fooled on the grid; "0": misclassified clean
    adversarial_class: int | None


@dataclass(frozen=True)
class SanityCheck:
    """One of the AutoAttack-style checks; failing ones suggest a broken attack or masked gradients."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class AuditResult:
    """One model version attacked with one attack over the epsilon grid."""

    model: str
    version: int
    task: str
    backbone: str
    attention: bool
    backend: str
    attack: str
    steps: int
    restarts: int
    audit_set: AuditSet
    clean_accuracy: float
    balanced_clean_accuracy: float
    points: tuple[EpsilonPoint, ...]
    samples: tuple[SampleOutcome, ...]
    sanity: tuple[SanityCheck, ...]
    seconds: float

    @property
    def robustness_score(self) -> float:
        """Mean robust accuracy over the grid."""
        return sum(p.robust_accuracy for p in self.points) / len(self.points) if self.points else 0.0

    @property
    def sanity_passed(self) -> bool:
        return all(c.passed for c in self.sanity)

    def to_json(self, run_id: int | None = None) -> dict[str, Any]:
        """A JSON-ready document: the audit set's sample ids and the per-epsilon figures."""
        doc = asdict(self)
        doc["robustness_score"] = self.robustness_score
        doc["sanity_passed"] = self.sanity_passed
        doc["points"] = [asdict(p) | {"per_class": dict(p.per_class)} for p in self.points]
        if run_id is not None:
            doc = {"run_id": run_id, **doc}
        return doc
