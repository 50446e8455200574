"""What an audit produces: small frozen values, independent of how they are stored or shown."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# A model whose clean answers go to one class for at least this share of the (class-stratified)
# audit set is degenerate: it keeps that class's share of robust accuracy at every epsilon, so its
# robust figures say nothing about robustness.
DEGENERATE_SHARE = 0.95
WILSON_Z = 1.959963984540054  # the two-sided 95% normal quantile
# The sanity check whose failure makes an audit black-box only (audit.gradient_check): the served
# gradient is not the forward's, so a query-only attack ran in place of the gradient attacks.
GRADIENT_CHECK = "gradient_consistent"


def wilson_interval(successes: int, n: int, *, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion `successes / n` (95% by default); (0, 1) when n is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"expected 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def worst_class(per_class: Mapping[str, float]) -> float | None:
    """The lowest per-class accuracy; None when no class was counted."""
    return min(per_class.values()) if per_class else None


def max_share(counts: Iterable[int]) -> float:
    """The share of the largest count in the total (0 when there is nothing to count)."""
    counts = list(counts)
    total = sum(counts)
    return max(counts) / total if total else 0.0


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
    """Robust accuracy at one epsilon, counted from the served model's predictions.

    `per_class` is each class's robust accuracy (recall under attack); the worst class and the
    Wilson interval are derived from it and from `samples`, so they cannot disagree with it.
    """

    epsilon: str
    robust_accuracy: float
    balanced_robust_accuracy: float
    per_class: Mapping[str, float]
    attacked: int  # images still standing, attacked at this epsilon
    fooled: int  # of those, verified misclassified inside the ball
    noise_robust_accuracy: float | None = None  # the uniform-noise reference, when run
    samples: int = 0  # images robust accuracy is counted over (the audit set); 0: unknown

    @property
    def worst_class_robust_accuracy(self) -> float | None:
        return worst_class(self.per_class)

    @property
    def robust_interval(self) -> tuple[float, float]:
        """95% Wilson score interval of `robust_accuracy` over `samples` images ((0, 1) if unknown)."""
        return wilson_interval(round(self.robust_accuracy * self.samples), self.samples)

    def to_json(self) -> dict[str, Any]:
        lower, upper = self.robust_interval
        return {
            "epsilon": self.epsilon, "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_lower": lower, "robust_accuracy_upper": upper,
            "balanced_robust_accuracy": self.balanced_robust_accuracy,
            "worst_class_robust_accuracy": self.worst_class_robust_accuracy, "per_class": dict(self.per_class),
            "attacked": self.attacked, "fooled": self.fooled, "noise_robust_accuracy": self.noise_robust_accuracy,
            "samples": self.samples,
        }


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
    """One model version attacked with one attack over the epsilon grid.

    `seed` is the attack's seed; `fooled_by` counts, per attack of an ensemble, the images it fooled.
    """

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
    seed: int = 0
    fooled_by: Mapping[str, int] = field(default_factory=dict)

    @property
    def robustness_score(self) -> float:
        """Mean robust accuracy over the grid's non-zero epsilons (0 when it has none).

        Epsilon 0 is clean accuracy, not robustness: counting it would lift every model by its
        clean accuracy divided by the grid's length.
        """
        attacked = [p.robust_accuracy for p in self.points if float(p.epsilon) > 0]
        return sum(attacked) / len(attacked) if attacked else 0.0

    @property
    def predicted_class_max_share(self) -> float:
        """The share of the audit set's clean served predictions that go to the most-predicted class."""
        return max_share(Counter(s.clean_class for s in self.samples).values())

    @property
    def degenerate(self) -> bool:
        """The model answers (almost) one class: its robust figures measure that class's share, not robustness."""
        return self.predicted_class_max_share >= DEGENERATE_SHARE

    @property
    def sanity_passed(self) -> bool:
        return all(c.passed for c in self.sanity)

    @property
    def black_box_only(self) -> bool:
        """The served gradient failed its consistency check: the figures are a query-only attack's, not the configured one's."""
        return any(c.name == GRADIENT_CHECK and not c.passed for c in self.sanity)

    def to_json(self, run_id: int | None = None) -> dict[str, Any]:
        """A JSON-ready document: the audit set's sample ids and the per-epsilon figures."""
        doc = {name: getattr(self, name) for name in self.__dataclass_fields__}
        doc["audit_set"] = asdict(self.audit_set)
        doc["samples"] = [asdict(s) for s in self.samples]
        doc["sanity"] = [asdict(c) for c in self.sanity]
        doc["fooled_by"] = dict(self.fooled_by)
        doc["robustness_score"] = self.robustness_score
        doc["sanity_passed"] = self.sanity_passed
        doc["predicted_class_max_share"] = self.predicted_class_max_share
        doc["degenerate"] = self.degenerate
        doc["black_box_only"] = self.black_box_only
        doc["points"] = [p.to_json() for p in self.points]
        if run_id is not None:
            doc = {"run_id": run_id, **doc}
        return doc

