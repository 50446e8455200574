"""What a reader needs beside every prediction, taken from the model card: what the model was trained
to tell apart, on which data, how well it did on its validation split, and whether it is a demo.

The page and the API show the same summary (the model listing's `summary`, the predict answer's
`model_summary`), so a program and a person are told the same thing about a synthetic demo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

DEMO_NOTICE = "Demo model trained on synthetic images: not a diagnosis"


@dataclass(frozen=True)
class Validation:
    """The card's validation-split figures, with chance (1/K) to read them against."""

    accuracy: float | None
    balanced_accuracy: float | None
    images: int | None
    chance: float | None


@dataclass(frozen=True)
class CardSummary:
    task: str | None
    class_names: tuple[str, ...]
    dataset: str | None  # the card's dataset record as a person reads it: "synthetic:240 (train 144, val 48, test 48)"
    synthetic: bool | None  # None: the card does not say (cards written before the dataset record)
    validation: Validation | None
    notice: str | None  # DEMO_NOTICE for a model trained on synthetic images

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dataset_text(record: Mapping[str, Any]) -> str | None:
    source = record.get("source") or record.get("kind")
    if not source:
        return None
    splits = record.get("splits")
    if isinstance(splits, Mapping) and splits:
        # train, val, test in that order (the card's JSON may hold them sorted), then any other
        order = [name for name in ("train", "val", "test") if name in splits] + sorted(set(splits) - {"train", "val", "test"})
        return f"{source} ({', '.join(f'{name} {splits[name]}' for name in order)})"
    return str(source)


def card_summary(card: Mapping[str, Any]) -> CardSummary:
    """The summary of one version's model card; fields the card lacks are None, never invented."""
    names = tuple(str(n) for n in card.get("class_names", ()))
    record = card.get("dataset")
    record = record if isinstance(record, Mapping) else {}
    synthetic = record.get("synthetic")
    if synthetic is None and record.get("kind") is not None:
        synthetic = record.get("kind") == "synthetic"
    metrics = card.get("metrics")
    val = metrics.get("val") if isinstance(metrics, Mapping) else None
    validation = None
    if isinstance(val, Mapping) and val.get("n"):
        validation = Validation(
            accuracy=_number(val.get("accuracy")),
            balanced_accuracy=_number(val.get("balanced_accuracy")),
            images=int(val["n"]),
            chance=1.0 / len(names) if names else None,
        )
    return CardSummary(
        task=str(card["task"]) if card.get("task") is not None else None,
        class_names=names,
        dataset=_dataset_text(record),
        synthetic=bool(synthetic) if synthetic is not None else None,
        validation=validation,
        notice=DEMO_NOTICE if synthetic else None,
    )
