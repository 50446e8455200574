"""The attacks an audit can run, by name: the registry of attack classes, and the Attacker that runs them.

L-infinity PGD through Foolbox is the paper's protocol and the default. APGD (cross-entropy, DLR
or its K = 2 stand-in the margin, and targeted) runs the project's own loop over `vjp`; Square is
query-only over `serving_default`; FAB-T runs over `vjp`; `ensemble` is AutoAttack's standard version
(APGD-CE, then APGD-T, then FAB-T, then Square on the images still standing; for two classes APGD-T
gives way to a second APGD start, see `stages`), standard only at its default budget. FGSM and L2 PGD are alternatives; additive
uniform noise at the same epsilon is the non-gradient reference the sanity checks compare against.

What each attack is (norm, threat model, stages, budget) is its spec in `training.contract.attacks`;
its code is a class under `audit.attack_base.Attack`, one module per family.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from audit.apgd import APGDCE, APGDDLR, APGDT
from audit.attack_base import Attack, Candidates, SingleAttack, Target
from audit.fab import FABT
from audit.foolbox_attacks import FGSM, L2PGD, LinfPGD
from audit.foolbox_model import ServedModel
from audit.noise import UniformNoise
from audit.square import Square
from training.contract.attacks import ATTACKS, AttackSpec, attack_spec
from training.contract.config import AttackConfig

__all__ = ["Attack", "Attacker", "Candidates", "SingleAttack", "attack_class", "distance", "is_random", "stages"]


class Ensemble(Attack):
    """AutoAttack's standard version: its stages run in turn, each on the images the previous left standing.

    The sweep runs the stages (`stages`), verifying each stage's candidates before the next, so the
    ensemble has no `run` of its own; its budget (APGD's steps, Square's queries) is its stages'.
    """

    spec: ClassVar[AttackSpec] = ATTACKS["ensemble"]


_CLASSES: tuple[type[Attack], ...] = (
    LinfPGD, APGDCE, APGDDLR, APGDT, FABT, Square, Ensemble, FGSM, L2PGD, UniformNoise,
)
REGISTRY: Mapping[str, type[Attack]] = MappingProxyType({cls.spec.name: cls for cls in _CLASSES})
ENSEMBLE = Ensemble.spec.stages


def attack_class(name: str) -> type[Attack]:
    """The class of the registered attack `name`."""
    attack_spec(name)  # the registry's own message for an unknown name
    return REGISTRY[name]


# What a stage becomes for a two-class model. With K = 2 targeted APGD has one target, the other
# class, and its targeted margin z_t - z_y is the untargeted margin, whose sign step is also
# cross-entropy's: APGD-T would repeat APGD-CE's algorithm (it made the same adversarials). Its budget
# goes to APGD on the margin loss (`apgd_dlr`'s K = 2 loss) from another random start instead; with
# K = 2 that is the same steps again from a new start, a restart, and the stage says so by its name.
TWO_CLASS_STAGES: Mapping[str, str] = MappingProxyType({"apgd_t": "apgd_dlr"})


def stages(name: str, classes: int | None = None) -> tuple[str, ...]:
    """The attacks `name` runs in turn on the images still standing (the ensemble's four, or itself),
    for a model of `classes` classes when given (see TWO_CLASS_STAGES)."""
    runs = attack_spec(name).runs
    if classes == 2 and len(runs) > 1:
        return tuple(TWO_CLASS_STAGES.get(stage, stage) for stage in runs)
    return runs


def is_random(name: str, config: AttackConfig) -> bool:
    """Whether another restart can find something the first did not."""
    return attack_spec(name).is_random(config.random_start)


class Attacker:
    """Runs any single attack of the registry (not the ensemble: see `stages`) on a batch of one served model."""

    def __init__(self, served: ServedModel, config: AttackConfig):
        self.served = served
        self.config = config
        self._target = Target(served)

    def __call__(
        self, name: str, images: np.ndarray, labels: np.ndarray, epsilon: float, clean_logits: np.ndarray,
        rng: np.random.Generator,
    ) -> Candidates:
        if epsilon == 0.0:
            return Candidates(images, None)  # the ball is one point: the served prediction of the image itself
        cls = attack_class(name)
        if not issubclass(cls, SingleAttack):
            raise TypeError(f"expected a single attack, got {name!r}, which runs {stages(name)} in turn (see stages)")
        # Valued from the configured attack's settings: an ensemble's steps reach its APGD stages.
        attack: SingleAttack = cls.from_config(self.config)
        return attack.run(self._target, images, np.asarray(labels, np.int64), epsilon, clean_logits=clean_logits, rng=rng)


def distance(name: str, adversarial: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per-image distance in the attack's norm (L-infinity or L2 over all pixels)."""
    diff = (adversarial.astype(np.float64) - clean.astype(np.float64)).reshape(len(clean), -1)
    if attack_spec(name).norm == "l2":
        l2: np.ndarray = np.sqrt((diff**2).sum(axis=1))
        return l2
    linf: np.ndarray = np.abs(diff).max(axis=1) if diff.size else np.zeros(len(clean))
    return linf
