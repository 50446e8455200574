"""The one table of the attacks an audit can run: name, norm, threat model, randomness, stages, budget.

Everything that needs to know what attacks exist reads this table: config validation and the
`--attack` choices, `reproduce`, the Grafana generator's attack variable and the README's attack
table (`attack_table_markdown`, checked by a test). The code of each attack is a class in the audit
package (`audit.attacks.attack_class(name)`), built from its spec's budget; a test holds the two
to the same names. Plain data, no heavy imports: `medrobust --help` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Norm = Literal["linf", "l2"]
# white-box: through `vjp` (gradients of the served model); score-based: through `serving_default`'s
# logits only; model-free: draws without looking at the model (the noise reference).
ThreatModel = Literal["white-box", "score-based", "model-free"]
BudgetValue = int | float | bool
# Budget fields an attack may take, each an AttackConfig setting (`steps` is AttackConfig.iterations).
BUDGET_FIELDS = ("steps", "step_ratio", "random_start", "queries")


@dataclass(frozen=True)
class AttackSpec:
    """What one attack is, apart from its code."""

    name: str
    label: str  # short name for tables and figures ("APGD-CE")
    norm: Norm
    threat_model: ThreatModel
    summary: str  # the README's "what" column
    budget: tuple[tuple[str, BudgetValue], ...] = ()  # (field, default) in BUDGET_FIELDS order
    stages: tuple[str, ...] = ()  # the attacks it runs in turn on the images still standing; () = itself
    random: bool = False  # draws at random whatever the budget (PGD is random only with random_start)

    def __post_init__(self) -> None:
        unknown = [f for f, _ in self.budget if f not in BUDGET_FIELDS]
        if unknown:
            raise ValueError(f"{self.name}: expected budget fields among {BUDGET_FIELDS}, got {unknown}")

    @property
    def defaults(self) -> Mapping[str, BudgetValue]:
        """The budget's fields and their defaults."""
        return MappingProxyType(dict(self.budget))

    @property
    def steps(self) -> int:
        """Iterations per image and epsilon when --steps is not given (1 for single-shot attacks)."""
        return int(self.defaults.get("steps", 1))

    @property
    def runs(self) -> tuple[str, ...]:
        """The attacks run in turn: the stages, or the attack itself."""
        return self.stages or (self.name,)

    @property
    def gradient_free(self) -> bool:
        return self.threat_model != "white-box"

    def is_random(self, random_start: bool) -> bool:
        """Whether another restart can find something the first did not."""
        return self.random or (random_start and "random_start" in self.defaults)


_PGD_BUDGET = (("steps", 20), ("step_ratio", 2.5), ("random_start", True))  # the paper's protocol
_APGD_BUDGET = (("steps", 100),)  # Croce & Hein 2020
_SQUARE_BUDGET = (("queries", 5000),)

# In the order the CLI, the reproduction's report and the README list them: the paper's first.
_SPECS = (
    AttackSpec(
        "linf_pgd", "PGD", "linf", "white-box",
        "the paper's protocol (default): L-inf PGD through Foolbox, step step_ratio x epsilon / steps, random "
        "start; keeps each image's first fooling iterate", _PGD_BUDGET,
    ),
    AttackSpec(
        "apgd_ce", "APGD-CE", "linf", "white-box",
        "APGD (Croce & Hein 2020) with cross-entropy", _APGD_BUDGET, random=True,
    ),
    AttackSpec(
        "apgd_dlr", "APGD-DLR", "linf", "white-box",
        "APGD with the DLR loss (the margin where K = 2)", _APGD_BUDGET, random=True,
    ),
    AttackSpec(
        "apgd_t", "APGD-T", "linf", "white-box",
        "targeted APGD towards each of the top min(9, K-1) other classes", _APGD_BUDGET, random=True,
    ),
    AttackSpec(
        "fab_t", "FAB-T", "linf", "white-box",
        "targeted FAB (Croce & Hein 2020), minimum-norm, towards each of the top min(9, K-1) other classes; no "
        "random start, as AutoAttack's FAB-T", _APGD_BUDGET,
    ),
    AttackSpec(
        "square", "Square", "linf", "score-based",
        "Square Attack (Andriushchenko et al. 2020), query-only: `queries` per image and epsilon", _SQUARE_BUDGET,
        random=True,
    ),
    AttackSpec(
        "ensemble", "ensemble", "linf", "white-box",
        "AutoAttack's standard version: `apgd_ce`, then `apgd_t`, then `fab_t`, then `square` on the images still "
        "standing (for K = 2, where APGD-T is APGD-CE again, `apgd_dlr`'s margin loss from another start instead); "
        "the JSON's `stages` and `fooled_by` say what ran and which attack fooled how many; a budget below the "
        "defaults is labelled reduced wherever its figures appear",
        _APGD_BUDGET + _SQUARE_BUDGET, stages=("apgd_ce", "apgd_t", "fab_t", "square"),  # cheap and strong first
    ),
    AttackSpec("fgsm", "FGSM", "linf", "white-box", "one signed-gradient step of size epsilon (Foolbox)"),
    AttackSpec(
        "l2_pgd", "L2 PGD", "l2", "white-box", "PGD in the L2 norm through Foolbox (epsilon is an L2 radius)",
        _PGD_BUDGET,
    ),
    AttackSpec(
        "uniform_noise", "noise", "linf", "model-free",
        "x + U(-epsilon, epsilon) per pixel: the non-gradient reference of the sanity checks", random=True,
    ),
)
ATTACKS: Mapping[str, AttackSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
DEFAULT_ATTACK = _SPECS[0].name
NOISE_REFERENCE = "uniform_noise"  # what the sanity checks compare every attack with


def attack_names(*, norm: Norm | None = None) -> tuple[str, ...]:
    """Every registered attack (of one norm when given), in the table's order."""
    return tuple(name for name, spec in ATTACKS.items() if norm is None or spec.norm == norm)


def attack_spec(name: str) -> AttackSpec:
    """The spec of `name`; a ValueError naming the registered attacks otherwise."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"expected an attack in {attack_names()}, got {name!r}") from None


def attacks_with(budget_field: str) -> tuple[str, ...]:
    """The attacks whose budget includes `budget_field` ("steps", "queries", ...)."""
    return tuple(name for name, spec in ATTACKS.items() if budget_field in spec.defaults)


def default_budget(budget_field: str) -> BudgetValue:
    """A budget field's default, the same for every attack that takes it (steps differ: see AttackSpec.steps)."""
    values = {spec.defaults[budget_field] for spec in ATTACKS.values() if budget_field in spec.defaults}
    if len(values) != 1:
        raise ValueError(f"expected one default of {budget_field!r} over the attacks, got {sorted(values)}")
    return values.pop()


STANDARD = "standard"
_BUDGET_WORDS = {"steps": "iterations", "queries": "queries"}


def budget_label(name: str, budget: Mapping[str, object]) -> str:
    """The words every figure of attack `name` run at `budget` is shown with.

    "standard" only at the spec's defaults (AutoAttack's for APGD, FAB-T, Square and the ensemble;
    the paper's for PGD); below them "reduced (25 iterations, 300 queries)", naming the whole budget;
    any other "non-standard (...)". Fields the attack does not take are ignored; a missing one is
    its default (runs stored before a field existed ran with its default).
    """
    defaults = attack_spec(name).defaults
    given = {f: budget.get(f, default) for f, default in defaults.items()}
    differs = [f for f in defaults if given[f] != defaults[f]]
    if not differs:
        return STANDARD
    smaller = all(
        isinstance(given[f], (int, float)) and not isinstance(given[f], bool) and given[f] < defaults[f]  # type: ignore[operator]
        for f in differs
    )
    words = []
    for f, value in given.items():
        if f in _BUDGET_WORDS:
            words.append(f"{value} {'steps' if name == DEFAULT_ATTACK and f == 'steps' else _BUDGET_WORDS[f]}")
        elif f in differs:
            words.append(f"{f.replace('_', ' ')} {value}")
    return f"{'reduced' if smaller else 'non-standard'} ({', '.join(words)})"


_THREAT = {"white-box": "white-box (`vjp`)", "score-based": "score-based (`serving_default`)", "model-free": "model-free"}


def attack_table_markdown() -> str:
    """The README's attack table, from this registry."""
    rows = ["| attack | norm | threat model | budget | what |", "| --- | --- | --- | --- | --- |"]
    for spec in ATTACKS.values():
        budget = ", ".join(f"{k} {v}" for k, v in spec.budget) or "none"
        rows.append(f"| `{spec.name}` | {spec.norm} | {_THREAT[spec.threat_model]} | {budget} | {spec.summary} |")
    return "\n".join(rows)
