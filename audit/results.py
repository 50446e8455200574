"""What an audit produces: small frozen values, independent of how they are stored or shown."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.contract.attacks import budget_label

# A model is degenerate when, with every true class weighted equally, at least this share of its
# clean answers go to one class (`balanced_max_share`). Weighted by class, not by image: the audit
# set is proportional to the test split, so on pneumonia (18 normal, 30 pneumonia of 48) a model
# answering "pneumonia" to 45 images has a plain share of 0.94 but a class-balanced one of 0.92,
# and gets 3 normal images of 18 right. At 0.9 on two classes, the other class's recall is at most
# 0.2 even when the favoured class's is 1: its robust figures are that class's share, not robustness.
DEGENERATE_SHARE = 0.9
WILSON_Z = 1.959963984540054  # the two-sided 95% normal quantile
INTERVAL_LEVEL = 0.95
# Balanced accuracy's interval: a percentile bootstrap over images, resampled within each true class
# (its image count fixed, so every class keeps a recall), with a fixed seed and count so that the same
# outcomes always give the same interval.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
INTERVALS = {
    "level": INTERVAL_LEVEL,
    "robust_accuracy": "Wilson score interval over the audit set's images",
    "per_class": "Wilson score interval over the class's images",
    "worst_class": "the Wilson interval of the class with the lowest robust accuracy (ties: the one with fewer images, "
                   "then the first by name)",
    "balanced": f"percentile bootstrap over images stratified by true class, {BOOTSTRAP_RESAMPLES} resamples, "
                f"seed {BOOTSTRAP_SEED}",
    "degenerate": f"at least {DEGENERATE_SHARE:.0%} of the clean answers go to one class, each true class weighted equally",
}
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


def balanced_max_share(labels: Sequence[int], predicted: Sequence[int]) -> tuple[float, int | None]:
    """(share, class): the largest mean over true classes of the fraction of that class's images
    answered `class`; each true class present weighs the same however many images it has. (0, None)
    when there is nothing to count."""
    if len(labels) != len(predicted):
        raise ValueError(f"expected one prediction per label, got {len(predicted)} for {len(labels)}")
    by_class: dict[int, Counter[int]] = {}
    for label, answer in zip(labels, predicted):
        by_class.setdefault(int(label), Counter())[int(answer)] += 1
    if not by_class:
        return 0.0, None
    answers = sorted({a for c in by_class.values() for a in c})
    shares = {a: sum(c[a] / sum(c.values()) for c in by_class.values()) / len(by_class) for a in answers}
    top = max(answers, key=lambda a: (shares[a], -a))
    return shares[top], top


def class_counts(correct: Sequence[bool], labels: Sequence[int], class_names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per class present in `labels`, by name: (images counted correct, images)."""
    if len(correct) != len(labels):
        raise ValueError(f"expected one outcome per label, got {len(correct)} for {len(labels)}")
    counts: dict[str, tuple[int, int]] = {}
    for c, name in enumerate(class_names):
        members = [bool(ok) for ok, label in zip(correct, labels) if int(label) == c]
        if members:
            counts[name] = (sum(members), len(members))
    return counts


def rates(counts: Mapping[str, tuple[int, int]]) -> tuple[float, float, dict[str, float]]:
    """(accuracy, balanced accuracy, per-class accuracy) read from per-class (correct, images) counts."""
    correct = sum(k for k, _ in counts.values())
    total = sum(n for _, n in counts.values())
    per_class = {name: k / n for name, (k, n) in counts.items()}
    balanced = sum(per_class.values()) / len(per_class) if per_class else 0.0
    return (correct / total if total else 0.0), balanced, per_class


def standing(samples: Iterable[SampleOutcome], epsilon: str) -> tuple[bool, ...]:
    """Per image: classified correctly clean and not fooled at any grid epsilon up to `epsilon`.

    The same rule as the sweep's robust mask, read from the stored per-image outcomes, so that a run's
    per-class figures can be counted again from what the store keeps."""
    e = float(epsilon)
    return tuple(
        s.clean_class == s.label and (s.fooled_at is None or float(s.fooled_at) > e) for s in samples
    )


def bootstrap_balanced_interval(
    counts: Mapping[str, tuple[int, int]], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
    level: float = INTERVAL_LEVEL,
) -> tuple[float, float]:
    """The percentile bootstrap interval of balanced accuracy (the mean of per-class recalls).

    Each resample draws, within every class, as many images as it has, with replacement, from its
    images' outcomes, and takes the mean of the resampled recalls; the interval is the central
    `level` of the `resamples` means. (0, 1) when nothing was counted."""
    if resamples < 1:
        raise ValueError(f"expected resamples >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"expected 0 < level < 1, got {level}")
    present = {name: (k, n) for name, (k, n) in counts.items() if n > 0}
    if not present:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    recalls = np.zeros((resamples, len(present)))
    for j, name in enumerate(sorted(present)):
        k, n = present[name]
        outcomes = np.arange(n) < k  # k correct images of n; which ones does not matter to a resample
        recalls[:, j] = outcomes[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    means = recalls.mean(axis=1)
    tail = (1 - level) / 2
    lower, upper = np.quantile(means, [tail, 1 - tail])
    return float(lower), float(upper)


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

    `per_class` is each class's robust accuracy (recall under attack). `class_counts` are the counts
    it is the ratio of, per class (images still standing, images); given, they must agree with it, and
    every interval is derived from them and from `samples`, so none can disagree with the figures.
    """

    epsilon: str
    robust_accuracy: float
    balanced_robust_accuracy: float
    per_class: Mapping[str, float]
    attacked: int  # images still standing, attacked at this epsilon
    fooled: int  # of those, verified misclassified inside the ball
    noise_robust_accuracy: float | None = None  # the uniform-noise reference, when run
    samples: int = 0  # images robust accuracy is counted over (the audit set); 0: unknown
    class_counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # empty: unknown (no class interval)

    def __post_init__(self) -> None:
        if not self.class_counts:
            return
        ratios = {name: k / n for name, (k, n) in self.class_counts.items()}
        if set(ratios) != set(self.per_class) or any(
            not math.isclose(ratios[c], self.per_class[c], abs_tol=1e-9) for c in ratios
        ):
            raise ValueError(
                f"epsilon {self.epsilon}: expected per_class to be the ratios of class_counts {dict(self.class_counts)}, "
                f"got {dict(self.per_class)}"
            )

    @classmethod
    def counted(
        cls, epsilon: str, counts: Mapping[str, tuple[int, int]], *, attacked: int, fooled: int,
        noise_robust_accuracy: float | None = None,
    ) -> EpsilonPoint:
        """The point whose every figure (mean, balanced, per class) is read from per-class counts."""
        robust, balanced, per_class = rates(counts)
        return cls(
            epsilon=epsilon, robust_accuracy=robust, balanced_robust_accuracy=balanced, per_class=per_class,
            attacked=attacked, fooled=fooled, noise_robust_accuracy=noise_robust_accuracy,
            samples=sum(n for _, n in counts.values()), class_counts=dict(counts),
        )

    @property
    def worst_class_robust_accuracy(self) -> float | None:
        return worst_class(self.per_class)

    @property
    def robust_interval(self) -> tuple[float, float]:
        """95% Wilson score interval of `robust_accuracy` over `samples` images ((0, 1) if unknown)."""
        return wilson_interval(round(self.robust_accuracy * self.samples), self.samples)

    @property
    def class_intervals(self) -> dict[str, tuple[float, float]]:
        """Per class: the 95% Wilson score interval of its robust accuracy over its images (empty if unknown)."""
        return {name: wilson_interval(k, n) for name, (k, n) in self.class_counts.items()}

    @property
    def worst_class(self) -> str | None:
        """The class with the lowest robust accuracy; of equals, the one with fewer images (the wider
        interval), then the first by name. None when the counts are unknown."""
        if not self.class_counts:
            return None
        return min(self.class_counts, key=lambda c: (self.per_class[c], self.class_counts[c][1], c))

    @property
    def worst_class_interval(self) -> tuple[float, float] | None:
        """The worst class's own Wilson interval (see `worst_class`); None when the counts are unknown."""
        worst = self.worst_class
        return None if worst is None else self.class_intervals[worst]

    @property
    def balanced_interval(self) -> tuple[float, float] | None:
        """Balanced robust accuracy's seeded, stratified bootstrap interval; None when the counts are unknown."""
        return bootstrap_balanced_interval(self.class_counts) if self.class_counts else None

    def intervals(self) -> dict[str, Any]:
        """Every interval of this point, as the JSON, the store and the page name them (None: unknown)."""
        worst, balanced = self.worst_class_interval, self.balanced_interval
        return {
            "class_counts": {c: list(kn) for c, kn in self.class_counts.items()} or None,
            "class_intervals": {c: list(i) for c, i in self.class_intervals.items()} or None,
            "worst_class": self.worst_class,
            "worst_class_robust_accuracy_lower": None if worst is None else worst[0],
            "worst_class_robust_accuracy_upper": None if worst is None else worst[1],
            "balanced_robust_accuracy_lower": None if balanced is None else balanced[0],
            "balanced_robust_accuracy_upper": None if balanced is None else balanced[1],
        }

    def to_json(self) -> dict[str, Any]:
        lower, upper = self.robust_interval
        return {
            "epsilon": self.epsilon, "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_lower": lower, "robust_accuracy_upper": upper,
            "balanced_robust_accuracy": self.balanced_robust_accuracy,
            "worst_class_robust_accuracy": self.worst_class_robust_accuracy, "per_class": dict(self.per_class),
            "attacked": self.attacked, "fooled": self.fooled, "noise_robust_accuracy": self.noise_robust_accuracy,
            "samples": self.samples, **self.intervals(),
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

    `seed` is the attack's seed; `fooled_by` counts, per attack of an ensemble, the images it fooled;
    `budget_label` says whether the budget was the standard one.
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
    budget: Mapping[str, Any] = field(default_factory=dict)  # the attack's budget as run: steps, queries, ...
    stages: tuple[str, ...] = ()  # the attacks run in turn by their real names (an ensemble's differ for K = 2)

    @property
    def budget_label(self) -> str:
        """"standard", or "reduced (25 iterations, 300 queries)": shown beside every figure of this run."""
        return budget_label(self.attack, {"steps": self.steps, **self.budget})

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
        """The share of the audit set's clean served predictions that go to the most-predicted class (by image)."""
        return max_share(Counter(s.clean_class for s in self.samples).values())

    @property
    def balanced_predicted_class_max_share(self) -> float:
        """The same share with every true class weighted equally (`balanced_max_share`): what `degenerate` reads."""
        return balanced_max_share([s.label for s in self.samples], [s.clean_class for s in self.samples])[0]

    @property
    def degenerate(self) -> bool:
        """The model answers (almost) one class: at least DEGENERATE_SHARE (0.9) of its clean answers, each
        true class weighted equally, go to one class; its robust figures measure that class's share, not robustness."""
        return self.balanced_predicted_class_max_share >= DEGENERATE_SHARE

    @property
    def clean_counts(self) -> dict[str, tuple[int, int]]:
        """Per class: (images classified correctly clean, images), from the per-image outcomes."""
        return class_counts([s.clean_class == s.label for s in self.samples], [s.label for s in self.samples],
                            self.audit_set.class_names)

    @property
    def clean_interval(self) -> tuple[float, float]:
        """95% Wilson score interval of clean accuracy over the audit set's images."""
        counts = self.clean_counts.values()
        return wilson_interval(sum(k for k, _ in counts), sum(n for _, n in counts))

    @property
    def balanced_clean_interval(self) -> tuple[float, float]:
        """Balanced clean accuracy's seeded, stratified bootstrap interval."""
        return bootstrap_balanced_interval(self.clean_counts)

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
        doc["budget"] = dict(self.budget)
        doc["stages"] = list(self.stages)
        doc["budget_label"] = self.budget_label
        doc["robustness_score"] = self.robustness_score
        doc["sanity_passed"] = self.sanity_passed
        doc["predicted_class_max_share"] = self.predicted_class_max_share
        doc["balanced_predicted_class_max_share"] = self.balanced_predicted_class_max_share
        doc["degenerate"] = self.degenerate
        doc["clean_accuracy_lower"], doc["clean_accuracy_upper"] = self.clean_interval
        doc["balanced_clean_accuracy_lower"], doc["balanced_clean_accuracy_upper"] = self.balanced_clean_interval
        doc["intervals"] = dict(INTERVALS)
        doc["black_box_only"] = self.black_box_only
        doc["points"] = [p.to_json() for p in self.points]
        if run_id is not None:
            doc = {"run_id": run_id, **doc}
        return doc

