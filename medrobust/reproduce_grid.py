"""The grid behind `medrobust reproduce`: train, export and audit each (backbone, variant, seed) cell.

Each finished step of a cell (trained, then audited once per attack) is recorded in a JSON state
file written atomically, so a rerun skips what is done and an interrupted training resumes from its
checkpoint. A cell's audits sit beside its "train" step, one key per attack: "audit" for L-inf PGD
(the key every state file had before there were other attacks, so old files read unchanged) and
"audit:<attack>" for any other, e.g. "audit:ensemble". Each audit records its attack's budget;
rerunning with an added attack audits the finished cells with it and trains nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.contract.attacks import DEFAULT_ATTACK, attacks_with
from training.contract.config import AttackConfig
from training.workflow import Variant, train_and_export

STATE_FILE = "state.json"
STATE_FORMAT = 1  # attacks added keys beside "audit", not a new layout


def audit_step(attack: str) -> str:
    """The key of a cell's audit with `attack` in the state file."""
    return "audit" if attack == DEFAULT_ATTACK else f"audit:{attack}"


def cell_audits(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A cell's finished audits by attack name (an old state file's "audit" is linf_pgd's)."""
    found = {}
    for key, value in cell.items():
        if key == "audit":
            found[DEFAULT_ATTACK] = value
        elif key.startswith("audit:"):
            found[key.removeprefix("audit:")] = value
    return found


def stored_budget(record: dict[str, Any], attack: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The budget an audit record was made with; PGD audits stored before budgets were recorded had the grid's steps."""
    if "budget" in record:
        return record["budget"]
    if attack == DEFAULT_ATTACK:
        return {"restarts": 1, "steps": settings["steps"]}
    return {}


@dataclass(frozen=True)
class Cell:
    """One model of the grid: a backbone, with or without attention, trained with one seed."""

    backbone: str
    attention: bool
    seed: int

    @property
    def variant(self) -> str:
        return "attention" if self.attention else "baseline"

    @property
    def key(self) -> str:
        return f"{self.backbone}/{self.variant}/seed-{self.seed}"


@dataclass(frozen=True)
class GridConfig:
    """What makes two runs the same experiment; a rerun into the same --out must match it."""

    task: str
    dataset: str
    backbones: tuple[str, ...]
    image_sizes: tuple[int, ...]  # one per backbone
    epochs: int
    limit: int | None
    seeds: tuple[int, ...]
    samples: int
    epsilons: tuple[str, ...]
    steps: int
    split_seed: int = 0
    audit_seed: int = 0
    batch_size: int = 32
    epoch_fraction: float = 1.0
    learning_rate: float = 0.01  # the paper's; from random initialisation a smaller one may be needed
    variants: tuple[str, ...] = ("baseline", "attention")
    weights: str | None = None  # backbone initialisation: None (random), "imagenet" or a weights file
    # Attacks and their budgets are not the grid's identity: an added attack audits the same models.
    # Each audit records its budget instead (see `budget`), and a rerun must not change it.
    attacks: tuple[str, ...] = (DEFAULT_ATTACK,)
    apgd_steps: int | None = None  # APGD's iterations, alone and in the ensemble; None: its default (100)
    queries: int | None = None  # Square's queries per image and epsilon, alone and in the ensemble; None: its default

    def image_size(self, backbone: str) -> int:
        return self.image_sizes[self.backbones.index(backbone)]

    def cells(self) -> tuple[Cell, ...]:
        """Backbone by backbone, seed by seed, baseline then attention (so pairs finish together)."""
        attention = tuple(a for a in (False, True) if ("attention" if a else "baseline") in self.variants)
        return tuple(Cell(b, a, s) for b in self.backbones for s in self.seeds for a in attention)

    def identity(self) -> dict[str, Any]:
        """The settings that change results (seeds may grow: new seeds add cells, old ones stay valid)."""
        doc = asdict(self)
        doc.pop("seeds")
        doc.pop("variants")
        doc.pop("backbones")
        doc.pop("image_sizes")
        for name in ("attacks", "apgd_steps", "queries"):
            doc.pop(name)
        doc["image_size_by_backbone"] = dict(zip(self.backbones, self.image_sizes))
        return json.loads(json.dumps(doc))  # as the state file holds it (tuples become lists)

    def attack_config(self, attack: str) -> AttackConfig:
        """The protocol of one attack on this grid: --steps for PGD, --apgd-steps for APGD (alone or in the
        ensemble), --queries for Square (likewise)."""
        steps = self.steps if attack == DEFAULT_ATTACK else self.apgd_steps if attack in attacks_with("steps") else None
        queries: dict[str, Any] = {} if self.queries is None else {"queries": self.queries}
        return AttackConfig(attack=attack, epsilons=self.epsilons, steps=steps, seed=self.audit_seed, **queries)

    def budget(self, attack: str) -> dict[str, Any]:
        """What an attack spends per image and epsilon: iterations, queries, restarts (recorded with its audits)."""
        config = self.attack_config(attack)
        doc: dict[str, Any] = {"restarts": config.restarts}
        if attack in attacks_with("steps"):
            doc["steps"] = config.iterations
        # Square's query budget, alone or as the ensemble's last stage
        if attack in attacks_with("queries"):
            doc["queries"] = config.queries
        return doc


class StateMismatch(ValueError):
    """--out holds a grid run with different settings; continuing would mix two experiments."""


class GridState:
    """The JSON state file: settings, and per cell what is finished. Every write is atomic."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        self.path = path
        self.doc = doc

    @classmethod
    def open(cls, out: Path, config: GridConfig) -> GridState:
        path = out / STATE_FILE
        if path.is_file():
            doc = json.loads(path.read_text())
            stored = doc.get("config", {})
            mine = config.identity()
            for backbone, size in stored.get("image_size_by_backbone", {}).items():
                if backbone in mine["image_size_by_backbone"] and mine["image_size_by_backbone"][backbone] != size:
                    raise StateMismatch(
                        f"{path}: expected --image-size {size} for {backbone} as in the stored run, got "
                        f"{mine['image_size_by_backbone'][backbone]}; use another --out for another experiment"
                    )
            # A setting added after a run was stored held its default value in that run.
            defaults = GridConfig.__dataclass_fields__
            stored_value = lambda k: stored[k] if k in stored else getattr(defaults[k], "default", None)  # noqa: E731
            differing = {
                k: (stored_value(k), v) for k, v in mine.items() if k != "image_size_by_backbone" and stored_value(k) != v
            }
            if differing:
                detail = ", ".join(f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in sorted(differing.items()))
                raise StateMismatch(f"{path}: this --out holds a run with other settings ({detail}); use another --out")
            doc["config"]["image_size_by_backbone"] = {
                **stored.get("image_size_by_backbone", {}), **mine["image_size_by_backbone"]
            }
            state = cls(path, doc)
            state.check_budgets(config)
            return state
        out.mkdir(parents=True, exist_ok=True)
        state = cls(path, {"format": STATE_FORMAT, "config": config.identity(), "cells": {}, "invocations": []})
        state.save()
        return state

    def close_abandoned(self) -> list[dict[str, Any]]:
        """Mark the invocations a vanished process left `running` as interrupted; returns them.

        A process that is killed outright (SIGKILL, the end of a session, the machine stopping)
        never records its end, so without this its invocation would read `running` for ever. Its
        finished stages are kept in the cells either way. An invocation is taken as ended when its
        process is gone, when it ran before the machine last booted (its pid may name another
        process now), or when it predates recorded pids: one --out is never run by two processes
        at once (parallel parts use their own --out and --merge).
        """
        boot = boot_id()
        marked = []
        for invocation in self.doc.get("invocations", []):
            if invocation.get("status") != "running":
                continue
            pid = invocation.get("pid")
            if pid is None or invocation.get("boot_id") != boot or not _pid_alive(pid):
                invocation["status"] = "interrupted: its process ended without recording an end (killed, or the machine stopped)"
                marked.append(invocation)
        if marked:
            self.save()
        return marked

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def check_budgets(self, config: GridConfig) -> None:
        """Raise StateMismatch if a cell was audited with one of `config.attacks` at another budget.

        A mean over seeds audited at two budgets would mean neither; a stronger budget needs another --out.
        """
        for attack in config.attacks:
            given = config.budget(attack)
            for key, cell in sorted(self.doc["cells"].items()):
                record = cell.get(audit_step(attack))
                if record is None:
                    continue
                stored = stored_budget(record, attack, self.doc["config"])
                if stored != given:
                    raise StateMismatch(
                        f"{self.path}: {key} was audited with {attack} at {_budget_text(stored)}, given "
                        f"{_budget_text(given)}; give the same --steps, --apgd-steps and --queries, or use another --out"
                    )

    def cell(self, cell: Cell) -> dict[str, Any]:
        return self.doc["cells"].get(cell.key, {})

    def record(self, cell: Cell, step: str, value: dict[str, Any]) -> None:
        entry = self.doc["cells"].setdefault(cell.key, {"backbone": cell.backbone, "attention": cell.attention, "seed": cell.seed})
        entry[step] = value
        self.save()

    def audited(self, cell: Cell, attack: str) -> bool:
        return audit_step(attack) in self.cell(cell)

    def done(self, cell: Cell, attacks: tuple[str, ...] = (DEFAULT_ATTACK,)) -> bool:
        """Trained and audited with every one of `attacks`."""
        return all(self.audited(cell, a) for a in attacks)


def boot_id() -> str | None:
    """This boot's random id (Linux); a pid recorded under another boot names no process of ours."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _budget_text(budget: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(budget.items())) or "no recorded budget"


def merged(state: GridState, others: list[GridState]) -> dict[str, Any]:
    """`state`'s document plus the finished cells of `others` (same settings) that it lacks.

    A cell is finished with any audit, and is taken whole (every attack's audit is of one model).
    Cells keep the model repository they were exported to, so versions stay traceable.
    """
    doc = json.loads(json.dumps(state.doc))
    for other in others:
        sizes = other.doc["config"]["image_size_by_backbone"]
        doc["config"]["image_size_by_backbone"] = {**sizes, **doc["config"]["image_size_by_backbone"]}
        for key, cell in other.doc["cells"].items():
            if cell_audits(cell) and not cell_audits(doc["cells"].get(key, {})):
                doc["cells"][key] = {**cell, "out": str(other.path.parent)}
        doc["invocations"] = doc.get("invocations", []) + [
            {**i, "out": str(other.path.parent)} for i in other.doc.get("invocations", [])
        ]
    return doc


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _audit_record(audit, budget: dict[str, Any]) -> dict[str, Any]:
    result = audit.result
    return {
        "model": result.model,
        "version": result.version,
        "attack": result.attack,
        "budget": budget,
        "seed": result.seed,
        "clean_accuracy": result.clean_accuracy,
        "balanced_clean_accuracy": result.balanced_clean_accuracy,
        "clean_accuracy_interval": list(result.clean_interval),
        "balanced_clean_accuracy_interval": list(result.balanced_clean_interval),
        # Per point: robust, balanced and worst-class robust accuracy, per-class recall, each with its 95% interval.
        "points": [p.to_json() for p in result.points],
        "robustness_score": result.robustness_score,
        "predicted_class_max_share": result.predicted_class_max_share,
        "balanced_predicted_class_max_share": result.balanced_predicted_class_max_share,
        "degenerate": result.degenerate,
        # Which of the ensemble's stages fooled each image first (the sweep's count until the result carries it).
        "fooled_by": dict(result.fooled_by) or audit.sweep.fooled_by_counts(),
        "audit_set": result.audit_set.fingerprint,
        "audit_set_size": len(result.audit_set),
        "sanity": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in result.sanity],
        "seconds": round(result.seconds, 1),
    }


def run_grid(
    config: GridConfig,
    *,
    out: Path,
    dataset,
    state: GridState,
    verbose: int | str = 2,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[Cell]:
    """Train, export and audit (with each of `config.attacks`) every unfinished cell; returns the cells
    this call worked on. A trained cell is only audited with the attacks it lacks."""
    from audit.runner import audit_model
    from medrobust.compose import build_predictor
    from training.contract.config import AuditConfig, ServiceConfig
    from training.recipe import Recipe

    repo = out / "model-repo"
    cells = config.cells()
    attacks = config.attacks
    todo = [c for c in cells if not state.done(c, attacks)]
    untrained = sum(1 for c in todo if "train" not in state.cell(c))
    log(
        f"reproduce {config.task}: {len(cells)} cells, attacks {', '.join(attacks)}; {len(cells) - len(todo)} already "
        f"finished, {len(todo)} to run ({untrained} to train)"
    )
    audit_configs = {
        attack: AuditConfig(
            dataset=config.dataset, model_repo=repo, attack=config.attack_config(attack), samples=config.samples,
            seed=config.audit_seed, progress=progress,
        )
        for attack in attacks
    }
    # Polling off: this loop refreshes the repository itself after each export.
    predictor = build_predictor(ServiceConfig(model_repo=repo), max_loaded=2, start_polling=False)
    started = time.perf_counter()
    worked: list[Cell] = []
    try:
        for cell in cells:
            if state.done(cell, attacks):
                continue
            number = cells.index(cell) + 1
            prefix = f"[cell {number}/{len(cells)}] {cell.key}"
            size = config.image_size(cell.backbone)
            record = state.cell(cell)
            worked.append(cell)
            if "train" not in record:
                workdir = out / "work" / f"{cell.backbone}-{cell.variant}-seed{cell.seed}"
                log(f"{prefix}: training at {size}x{size} (elapsed {_clock(time.perf_counter() - started)})")
                recipe = Recipe(
                    epochs=config.epochs, batch_size=config.batch_size, epoch_fraction=config.epoch_fraction,
                    learning_rate=config.learning_rate, seed=cell.seed,
                )
                # resume=True continues from the cell's own checkpoint when an earlier run died mid-training.
                trained = train_and_export(
                    dataset, Variant(cell.backbone, cell.attention), task=config.task, image_size=size, model_repo=repo,
                    recipe=recipe, limit=config.limit, weights=config.weights, workdir=workdir, resume=True, verbose=verbose, log=log,
                    position=(number, len(cells)),
                )
                state.record(cell, "train", {
                    "model": trained.model, "version": trained.version, "seconds": round(trained.seconds, 1),
                    "images_per_second": round(trained.images_per_second, 1),
                    "epochs_trained": trained.metrics.get("epochs_trained"), "best_epoch": trained.metrics.get("best_epoch"),
                    "val_accuracy": trained.metrics["val"].get("accuracy"),
                    "val_balanced_accuracy": trained.metrics["val"].get("balanced_accuracy"),
                    "test_accuracy": trained.metrics["test"].get("accuracy"),
                    "test_balanced_accuracy": trained.metrics["test"].get("balanced_accuracy"),
                })
                shutil.rmtree(workdir, ignore_errors=True)  # the exported version is what counts now
                record = state.cell(cell)
            train = record["train"]
            predictor.refresh()
            for attack in attacks:
                if state.audited(cell, attack):
                    continue
                log(f"{prefix}: auditing {train['model']} version {train['version']} with {attack} "
                    f"(elapsed {_clock(time.perf_counter() - started)})")
                audit = audit_model(predictor, train["model"], dataset, audit_configs[attack], version=int(train["version"]))
                state.record(cell, audit_step(attack), _audit_record(audit, config.budget(attack)))
                points = " ".join(f"{p.epsilon}:{p.robust_accuracy:.2f}" for p in audit.result.points)
                log(f"{prefix}: {attack}: clean {audit.result.clean_accuracy:.3f}, robust {points} "
                    f"(elapsed {_clock(time.perf_counter() - started)})")
    finally:
        predictor.close()
    return worked
