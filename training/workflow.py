"""Train-and-export: the work behind `medrobust train`, shared by `up` and `reproduce`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.card import BACKBONES
from training.dataset_types import Dataset


@dataclass(frozen=True)
class Variant:
    backbone: str
    attention: bool


ALL_VARIANTS = tuple(Variant(b, a) for b in BACKBONES for a in (False, True))


def dataset_card(dataset: Dataset) -> dict[str, Any]:
    """What the model card records about the data a model was trained on."""
    return {
        "kind": dataset.kind,
        "source": dataset.source,
        "fingerprint": dataset.fingerprint,
        "synthetic": dataset.synthetic,
        "splits": {name: len(dataset.split(name)) for name in ("train", "val", "test")},
    }


@dataclass(frozen=True)
class TrainedVersion:
    model: str
    version: int
    path: Path
    metrics: dict[str, Any]
    images_per_second: float
    seconds: float


def train_and_export(
    dataset: Dataset,
    variant: Variant,
    *,
    task: str,
    image_size: int,
    model_repo: str | Path,
    recipe,
    limit: int | None = None,
    weights: str | None = None,
    workdir: str | Path | None = None,
    resume: bool = False,
    serving_root: str | None = None,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
    position: tuple[int, int] = (1, 1),
) -> TrainedVersion:
    """Build, train with `recipe` and export one variant as a new version; returns what was written.

    `position` is (i, n) for "model i of n" in the progress; `verbose` 0 silences training's progress.
    """
    from training import recipe as recipes
    from training.export import export_model
    from training.models import build_model, model_name

    name = model_name(task, variant.backbone, variant.attention)
    model = build_model(
        variant.backbone, attention=variant.attention, num_classes=len(dataset.class_names),
        image_size=image_size, weights=weights,
    )
    label = f"model {position[0]} of {position[1]} {name}"
    log(f"training {name}: {model.count_params():,} parameters, {image_size}x{image_size} inputs")
    checkpoints = Path(workdir) / name if workdir is not None else None
    result = recipes.train(
        model, dataset, recipe=recipe, limit=limit, checkpoint_dir=checkpoints, resume=resume, verbose=verbose,
        label=label,
    )
    train_size = min(len(dataset.train), limit) if limit else len(dataset.train)
    exported = export_model(
        result.model,
        model_repo,
        task=task,
        class_names=dataset.class_names,
        dataset=dataset_card(dataset),
        metrics=result.metrics,
        training={
            **recipes.recipe_card(recipe, limit=limit, train_size=train_size),
            "weights": weights or "random",
            "seconds": round(result.seconds, 1),
            "images_per_second": round(result.images_per_second, 1),
        },
        serving_root=serving_root,
        log=log if verbose else None,
    )
    if checkpoints is not None:
        import json

        (checkpoints / "best.card.json").write_text(json.dumps(exported.card, indent=2) + "\n")
    val = result.metrics["val"]
    log(
        f"exported {exported.model} version {exported.version} to {exported.path} "
        f"(val accuracy {val.get('accuracy')}, balanced {val.get('balanced_accuracy')})"
    )
    return TrainedVersion(exported.model, exported.version, exported.path, result.metrics, result.images_per_second, result.seconds)
