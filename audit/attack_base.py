"""The base of every attack class: its spec from the registry, a keyword-only budget, one `run` per batch.

As Foolbox 3's attacks, each family lives in its own module (`foolbox_attacks`, `apgd`, `square`,
`noise`) and is built keyword-only with its own defaults; what an attack is (norm, threat model,
stages, budget fields and their defaults) is its `spec` in `training.contract.attacks`, the table the
CLI, config validation, reproduce, the dashboards and the README read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np

from audit.foolbox_model import IterateRecorder, ServedModel, foolbox_model
from training.contract.attacks import AttackSpec, BudgetValue
from training.contract.config import AttackConfig

if TYPE_CHECKING:
    from foolbox.models.base import Model as FoolboxModel

_POSITIVE = ("steps", "queries", "step_ratio")


@dataclass(frozen=True)
class Candidates:
    """Unverified adversarial candidates for a batch, with the attack's margin curve when it has one."""

    adversarial: np.ndarray  # float32 [n, H, W, 3]
    margins: np.ndarray | None  # float32 [rows, n]: lowest true-class margin seen so far, row 0 at the start


class Target:
    """One served model as the attacks reach it: its signatures, and Foolbox's wrapper built on first use."""

    def __init__(self, served: ServedModel):
        self.served = served
        self.recorder = IterateRecorder()
        self._foolbox: FoolboxModel | None = None

    def foolbox(self) -> FoolboxModel:
        if self._foolbox is None:
            self._foolbox = foolbox_model(self.served, self.recorder)
        return self._foolbox


class Attack(ABC):  # what an attack is; SingleAttack adds the abstract run
    """An attack with its budget: `LinfPGD(steps=40)`, `Square(queries=1000)`; unnamed fields take the spec's defaults."""

    spec: ClassVar[AttackSpec]

    def __init__(self, **budget: BudgetValue):
        allowed = tuple(self.spec.defaults)
        unknown = sorted(set(budget) - set(allowed))
        if unknown:
            raise TypeError(f"{type(self).__name__}: expected budget fields among {allowed}, got {', '.join(unknown)}")
        values = {**self.spec.defaults, **budget}
        for name in _POSITIVE:
            if name in values and not values[name] > 0:
                raise ValueError(f"{type(self).__name__}: expected {name} > 0, got {values[name]}")
        self.budget: Mapping[str, BudgetValue] = MappingProxyType(values)

    @classmethod
    def from_config(cls, config: AttackConfig) -> Self:
        """This attack with the budget `config` gives it (its --steps, --queries, ...)."""
        return cls(**config.budget(cls.spec.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.budget.items())})"


class SingleAttack(Attack):
    """An attack that turns one batch into candidates in one go (every attack but a composition of them)."""

    @abstractmethod
    def run(
        self, target: Target, images: np.ndarray, labels: np.ndarray, epsilon: float, *, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        """Candidates for `images` (labels int64) at `epsilon` > 0; verification is the sweep's."""
