"""The audit's one frozen configuration, built once at the process edge from flags, then `MEDROBUST_*`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from medrobust.env import env_float, env_int, env_str

# The paper's grid on [0, 1] pixels; written as decimals so labels are exact ("0.00125", not 0.00125000001).
PAPER_EPSILONS = ("0", "0.00125", "0.0025", "0.005", "0.01", "0.02", "0.04", "0.08", "0.16", "0.32")
ATTACKS = ("linf_pgd", "apgd_ce", "apgd_dlr", "apgd_t", "square", "ensemble", "fgsm", "l2_pgd", "uniform_noise")
# Iterations when --steps is not given: the paper's PGD protocol, APGD's 100 (Croce & Hein 2020).
DEFAULT_STEPS = {"linf_pgd": 20, "l2_pgd": 20, "apgd_ce": 100, "apgd_dlr": 100, "apgd_t": 100, "ensemble": 100}
DEFAULT_SCHEDULE = "0 3 * * *"  # nightly at 03:00
DEFAULT_DATABASE_URL = "sqlite:///.medrobust/audits.sqlite"
DEFAULT_ARTEFACTS = ".medrobust/audits"


def epsilon_label(value: str | float | Decimal) -> str:
    """The canonical decimal string of an epsilon: "0", "0.00125", "0.32" (the metrics' label value)."""
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        raise ValueError(f"expected an epsilon as a decimal number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"expected a finite epsilon >= 0, got {value!r}")
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    return text


def parse_epsilons(values: Sequence[str | float] | str) -> tuple[str, ...]:
    """Epsilons as sorted, unique canonical labels; accepts "0,0.01" or a sequence."""
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    labels = sorted({epsilon_label(v) for v in values}, key=Decimal)
    if not labels:
        raise ValueError("expected at least one epsilon, got none")
    return tuple(labels)


@dataclass(frozen=True)
class AttackConfig:
    """How each image is attacked; defaults are the paper's protocol."""

    attack: str = "linf_pgd"
    epsilons: tuple[str, ...] = PAPER_EPSILONS
    steps: int | None = None  # None: the attack's own default (DEFAULT_STEPS)
    step_ratio: float = 2.5  # PGD: steps x step size = step_ratio x epsilon
    random_start: bool = True
    restarts: int = 1
    batch_size: int = 64
    noise_check: bool = True  # the uniform-noise reference of the sanity checks
    queries: int = 5000  # Square Attack's budget per image (alone and in the ensemble)
    seed: int = 0  # random starts and Square's draws; stored with the run

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"expected an attack in {ATTACKS}, got {self.attack!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"expected steps >= 1, got {self.steps}")
        if self.queries < 1:
            raise ValueError(f"expected queries >= 1, got {self.queries}")
        if self.restarts < 1:
            raise ValueError(f"expected restarts >= 1, got {self.restarts}")
        if self.batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {self.batch_size}")
        if self.step_ratio <= 0:
            raise ValueError(f"expected step_ratio > 0, got {self.step_ratio}")
        object.__setattr__(self, "epsilons", parse_epsilons(self.epsilons))

    @property
    def epsilon_values(self) -> tuple[float, ...]:
        return tuple(float(e) for e in self.epsilons)

    @property
    def iterations(self) -> int:
        """Steps per image and epsilon: --steps, else the attack's default (1 for single-shot attacks)."""
        return self.steps if self.steps is not None else DEFAULT_STEPS.get(self.attack, 1)

    def for_attack(self, name: str) -> AttackConfig:
        """The same protocol with another attack (whose default steps apply unless --steps was given)."""
        return replace(self, attack=name)


def parse_attacks(values: Sequence[str] | str) -> tuple[str, ...]:
    """Attack names, unique, in the order given; accepts "linf_pgd,ensemble" or a sequence."""
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    names = tuple(dict.fromkeys(values))
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise ValueError(f"expected attacks among {ATTACKS}, got {', '.join(map(repr, unknown)) or 'none'}")
    return names


@dataclass(frozen=True)
class AuditConfig:
    """Everything one audit process needs: where the models and data are, the protocol, the store."""

    dataset: str | None = None
    model_repo: Path | None = None
    tf_serving: str | None = None  # HOST:PORT; the model repository, when also given, supplies cards
    models: tuple[str, ...] = ()
    attack: AttackConfig = field(default_factory=AttackConfig)  # the protocol; its `attack` is the first of `attacks`
    attacks: tuple[str, ...] = ()  # each its own run and `attack` label; () means (attack.attack,)
    samples: int = 256
    seed: int = 0
    database_url: str = DEFAULT_DATABASE_URL
    artefacts_dir: Path = Path(DEFAULT_ARTEFACTS)
    schedule: str = DEFAULT_SCHEDULE
    poll_seconds: float = 30.0
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9101
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"expected samples >= 1, got {self.samples}")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"expected a metrics port in 0..65535, got {self.metrics_port}")
        if self.poll_seconds <= 0:
            raise ValueError(f"expected poll_seconds > 0, got {self.poll_seconds}")
        object.__setattr__(self, "attacks", parse_attacks(self.attacks or (self.attack.attack,)))

    def attack_config(self, name: str | None = None) -> AttackConfig:
        """The protocol of one of `attacks` (the first when not named)."""
        name = self.attacks[0] if name is None else name
        if name not in self.attacks:
            raise ValueError(f"expected an attack among the configured {self.attacks}, got {name!r}")
        return self.attack.for_attack(name)

    def with_(self, **changes) -> AuditConfig:
        return replace(self, **changes)


def config_from_env(environ: Mapping[str, str] | None = None, **flags) -> AuditConfig:
    """An AuditConfig from flags (None = not given) over `MEDROBUST_*` variables over defaults."""
    env = os.environ if environ is None else environ

    def pick(name, env_value):
        value = flags.get(name)
        return env_value if value is None else value

    attacks = parse_attacks(pick("attack", env_str("AUDIT_ATTACK", "linf_pgd", env)))
    steps_env = env_str("AUDIT_STEPS", None, env)
    seed = pick("seed", env_int("AUDIT_SEED", 0, env))
    attack = AttackConfig(
        attack=attacks[0],
        epsilons=parse_epsilons(pick("epsilons", env_str("AUDIT_EPSILONS", ",".join(PAPER_EPSILONS), env))),
        steps=pick("steps", None if steps_env is None else env_int("AUDIT_STEPS", 0, env)),
        queries=pick("queries", env_int("AUDIT_QUERIES", 5000, env)),
        seed=seed,
        restarts=pick("restarts", env_int("AUDIT_RESTARTS", 1, env)),
        batch_size=pick("batch_size", env_int("AUDIT_BATCH_SIZE", 64, env)),
        random_start=pick("random_start", True),
    )
    # With TF Serving, a mounted repository (if any) still supplies the model cards.
    tf_serving = pick("tf_serving", None if flags.get("model_repo") else env_str("TF_SERVING", None, env))
    model_repo = pick("model_repo", env_str("MODEL_REPO", None if tf_serving else "model-repo", env))
    models = flags.get("models") or tuple(m for m in (env_str("AUDIT_MODELS", "", env) or "").split(",") if m)
    return AuditConfig(
        dataset=pick("dataset", env_str("AUDIT_DATASET", None, env)),
        model_repo=None if model_repo is None else Path(model_repo),
        tf_serving=tf_serving,
        models=tuple(models),
        attack=attack,
        attacks=attacks,
        samples=pick("samples", env_int("AUDIT_SAMPLES", 256, env)),
        seed=seed,
        database_url=pick("database_url", env_str("DATABASE_URL", DEFAULT_DATABASE_URL, env)),
        artefacts_dir=Path(pick("artefacts_dir", env_str("AUDIT_ARTEFACTS", DEFAULT_ARTEFACTS, env))),
        schedule=pick("schedule", env_str("AUDIT_SCHEDULE", DEFAULT_SCHEDULE, env)),
        poll_seconds=pick("poll_seconds", env_float("AUDIT_POLL_SECONDS", 30.0, env)),
        metrics_host=pick("metrics_host", env_str("AUDIT_METRICS_HOST", "0.0.0.0", env)),
        metrics_port=pick("metrics_port", env_int("AUDIT_METRICS_PORT", 9101, env)),
        progress=pick("progress", True),
    )
