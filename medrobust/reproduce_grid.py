"""The grid behind `medrobust reproduce`: train, export and audit each (backbone, variant, seed) cell.

Each finished step of a cell (trained, then audited) is recorded in a JSON state file written
atomically, so a rerun skips what is done and an interrupted training resumes from its checkpoint.
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

from training.workflow import Variant, train_and_export

STATE_FILE = "state.json"
STATE_FORMAT = 1


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
        doc["image_size_by_backbone"] = dict(zip(self.backbones, self.image_sizes))
        return json.loads(json.dumps(doc))  # as the state file holds it (tuples become lists)


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
            return cls(path, doc)
        out.mkdir(parents=True, exist_ok=True)
        state = cls(path, {"format": STATE_FORMAT, "config": config.identity(), "cells": {}, "invocations": []})
        state.save()
        return state

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def cell(self, cell: Cell) -> dict[str, Any]:
        return self.doc["cells"].get(cell.key, {})

    def record(self, cell: Cell, step: str, value: dict[str, Any]) -> None:
        entry = self.doc["cells"].setdefault(cell.key, {"backbone": cell.backbone, "attention": cell.attention, "seed": cell.seed})
        entry[step] = value
        self.save()

    def done(self, cell: Cell) -> bool:
        return "audit" in self.cell(cell)


def merged(state: GridState, others: list[GridState]) -> dict[str, Any]:
    """`state`'s document plus the finished cells of `others` (same settings) that it lacks.

    Cells keep the model repository they were exported to, so versions stay traceable.
    """
    doc = json.loads(json.dumps(state.doc))
    for other in others:
        sizes = other.doc["config"]["image_size_by_backbone"]
        doc["config"]["image_size_by_backbone"] = {**sizes, **doc["config"]["image_size_by_backbone"]}
        for key, cell in other.doc["cells"].items():
            if "audit" in cell and "audit" not in doc["cells"].get(key, {}):
                doc["cells"][key] = {**cell, "out": str(other.path.parent)}
        doc["invocations"] = doc.get("invocations", []) + [
            {**i, "out": str(other.path.parent)} for i in other.doc.get("invocations", [])
        ]
    return doc


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _audit_record(audit) -> dict[str, Any]:
    result = audit.result
    return {
        "model": result.model,
        "version": result.version,
        "clean_accuracy": result.clean_accuracy,
        "balanced_clean_accuracy": result.balanced_clean_accuracy,
        "points": [
            {
                "epsilon": p.epsilon,
                "robust_accuracy": p.robust_accuracy,
                "balanced_robust_accuracy": p.balanced_robust_accuracy,
                "noise_robust_accuracy": p.noise_robust_accuracy,
                "attacked": p.attacked,
                "fooled": p.fooled,
            }
            for p in result.points
        ],
        "robustness_score": result.robustness_score,
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
    """Train, export and audit every unfinished cell; returns the cells this call worked on."""
    from audit.config import AttackConfig, AuditConfig
    from audit.runner import audit_model
    from service.embedded import EmbeddedPredictor
    from training.recipe import Recipe

    repo = out / "model-repo"
    cells = config.cells()
    todo = [c for c in cells if not state.done(c)]
    log(f"reproduce {config.task}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run")
    audit_config = AuditConfig(
        dataset=config.dataset, model_repo=repo, attack=AttackConfig(epsilons=config.epsilons, steps=config.steps),
        samples=config.samples, seed=config.audit_seed, progress=progress,
    )
    predictor = EmbeddedPredictor(repo, max_loaded=2, poll_seconds=0.0)
    started = time.perf_counter()
    worked: list[Cell] = []
    try:
        for cell in cells:
            if state.done(cell):
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
            log(f"{prefix}: auditing {train['model']} version {train['version']} (elapsed {_clock(time.perf_counter() - started)})")
            predictor.refresh()
            audit = audit_model(predictor, train["model"], dataset, audit_config, version=int(train["version"]))
            state.record(cell, "audit", _audit_record(audit))
            points = " ".join(f"{p.epsilon}:{p.robust_accuracy:.2f}" for p in audit.result.points)
            log(f"{prefix}: clean {audit.result.clean_accuracy:.3f}, robust {points} (elapsed {_clock(time.perf_counter() - started)})")
    finally:
        predictor.close()
    return worked
