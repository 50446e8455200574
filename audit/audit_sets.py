"""Which data each task's models are audited on (`audit.auditset` then draws the images from it).

In order, a model is audited on:

1. its task's entry in the audit-sets file (`--audit-sets FILE`, `MEDROBUST_AUDIT_SETS`), TOML:

       [tasks]
       derm = "ham10000:/data/ham10000"
       pneumothorax = "chestxray14:/data/chestxray14"

2. else `--dataset` (`MEDROBUST_AUDIT_DATASET`), the default of every task, as before there was a file;
3. else the dataset its model card says it was trained on, where that can be read here (a path that
   exists on this machine, or the synthetic set).

A model none of them covers is unauditable: it is never audited (its task's data is nobody's
guess), and the Audits page, `GET /api/v1/audits` and `medrobust_audit_unauditable` name it. A
model whose set is another task's data is refused by the audit itself (class names must match).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

FILE = "file"
DEFAULT = "default"
CARD = "model card"


class AuditSetsError(ValueError):
    """An audit-sets file that cannot be used; the message names the file, what was expected and found."""


@dataclass(frozen=True)
class Coverage:
    """Where one served model's audit set comes from; `dataset` None: unauditable."""

    model: str
    task: str
    dataset: str | None
    origin: str | None  # FILE, DEFAULT or CARD

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "dataset": self.dataset, "origin": self.origin}


@dataclass(frozen=True)
class AuditSets:
    """The audit sets by task, with the default for every other task; `audit_set_for` answers per model."""

    tasks: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    default: str | None = None
    source: str | None = None  # the file they came from, for messages

    def resolve(self, card: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(dataset spec, origin) of the model with this card; (None, None) when nothing covers its task."""
        task = str(card.get("task", ""))
        if task in self.tasks:
            return self.tasks[task], FILE
        if self.default:
            return self.default, DEFAULT
        trained_on = (card.get("dataset") or {}).get("source")
        if isinstance(trained_on, str) and readable_here(trained_on):
            return trained_on, CARD
        return None, None

    def audit_set_for(self, card: Mapping[str, Any]) -> str | None:
        """The dataset spec a model (its card) is audited on, or None when its task has no audit set."""
        return self.resolve(card)[0]

    def coverage(self, models: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[Coverage, ...]:
        """Per served (name, card), its audit set and where it comes from, by name."""
        found = []
        for name, card in sorted(models, key=lambda item: item[0]):
            dataset, origin = self.resolve(card)
            found.append(Coverage(name, str(card.get("task", "")), dataset, origin))
        return tuple(found)

    def unauditable(self, models: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[tuple[str, str], ...]:
        """(model, task) of every served model nothing covers."""
        return tuple((c.model, c.task) for c in self.coverage(models) if c.dataset is None)


def readable_here(spec: str) -> bool:
    """Whether a dataset spec can be read on this machine without a download: synthetic, or a path that exists."""
    kind, _, argument = spec.partition(":")
    if kind == "synthetic":
        return True
    return bool(argument) and os.path.exists(os.path.expanduser(argument))


def load_audit_sets(path: str | os.PathLike[str] | None, default: str | None = None) -> AuditSets:
    """The audit sets of `path` (a TOML file with a `[tasks]` table of task = "KIND:PATH"), and `default`."""
    if path is None:
        return AuditSets(default=default or None)
    where = Path(path)
    try:
        doc = tomllib.loads(where.read_text())
    except OSError as exc:
        raise AuditSetsError(f"{where}: expected a readable audit-sets file, got {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuditSetsError(f"{where}: expected TOML, got a syntax error: {exc}") from None
    tasks = doc.get("tasks")
    extra = sorted(set(doc) - {"tasks"})
    if not isinstance(tasks, dict) or extra:
        raise AuditSetsError(
            f'{where}: expected one [tasks] table of task = "KIND:PATH", got '
            + (f"other keys {extra}" if extra else f"tasks = {tasks!r}")
        )
    bad = {task: spec for task, spec in tasks.items() if not isinstance(spec, str) or ":" not in spec and spec != "synthetic"}
    if bad:
        raise AuditSetsError(f'{where}: expected each task\'s audit set as "KIND:PATH", got {bad}')
    return AuditSets(MappingProxyType(dict(tasks)), default or None, str(where))
