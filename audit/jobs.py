"""What gets audited: jobs queued for served models by the schedule, a new version, the API and the CLI.

A job is (model, version, attack with its budget, audit set spec, seed); `AuditRunner.run_config`
writes it down and the store keeps one active job per such key. The audit set of a model comes
from `audit_set_for(card)`, injected: a model without one is not queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audit.store import AuditStore, Enqueued

if TYPE_CHECKING:
    from audit.runner import AuditRunner
    from service.predictor import Predictor
    from training.contract.config import AuditConfig

log = logging.getLogger(__name__)

AuditSetFor = Callable[[Mapping[str, Any]], "str | None"]
# Statuses of an earlier run of the same job that make a trigger skip it. A new version is audited
# once, whatever came of it; a restart (`up`, `worker --now`) does not audit a version again that
# has a finished audit under the same settings. The schedule re-audits on purpose; the API and the
# CLI do what they are asked.
SKIP = {"new_version": ("succeeded", "failed", "cancelled"), "startup": ("succeeded",)}


def configured_audit_set(dataset: str | None) -> AuditSetFor:
    """Today's rule: every model is audited on the configured `--dataset`."""
    return lambda _card: dataset


@dataclass(frozen=True)
class Queued:
    """One model's job, as queued (or found already there), or why it was not."""

    model: str
    attack: str
    version: int
    run_id: int | None
    created: bool
    status: str  # queued | running | succeeded | failed | cancelled | no_audit_set


class Enqueuer:
    """Queues jobs for served models into the store."""

    def __init__(
        self, config: AuditConfig, predictor: Predictor, store: AuditStore, runner: AuditRunner,
        audit_set_for: AuditSetFor | None = None,
    ) -> None:
        self.config = config
        self.predictor = predictor
        self.store = store
        self.runner = runner
        self.audit_set_for = audit_set_for or configured_audit_set(config.dataset)

    def models(self) -> tuple[str, ...]:
        """The served models this worker audits (`--models`, else every served one)."""
        served = tuple(m.name for m in self.predictor.list_models())
        return tuple(m for m in self.config.models if m in served) if self.config.models else served

    def enqueue(self, model: str, *, trigger: str, attack: str | None = None, version: int | None = None) -> Queued:
        """Queue one job of `model` (its newest version unless named) with `attack` (the first configured)."""
        attack = attack or self.config.attacks[0]
        pinned = self.predictor.model_info(model).latest if version is None else int(version)
        card = self.predictor.model_card(model, pinned)
        dataset = self.audit_set_for(card)
        if dataset is None:
            log.warning("%s version %s: no audit set for its task %r: not queued", model, pinned, card.get("task"))
            return Queued(model, attack, pinned, None, False, "no_audit_set")
        done: Enqueued = self.store.enqueue(
            model=model, version=pinned, card=card, backend=self.predictor.backend_name,
            attack=self.config.attack_config(attack).attack, config=self.runner.run_config(attack, dataset),
            trigger=trigger, max_attempts=self.config.max_attempts, skip_if=SKIP.get(trigger, ()),
        )
        if done.created:
            log.info("queued run %s: %s version %s, %s (%s)", done.run_id, model, pinned, attack, trigger)
        return Queued(model, attack, pinned, done.run_id, done.created, done.status)

    def enqueue_all(self, trigger: str, *, models: tuple[str, ...] | None = None,
                    attacks: tuple[str, ...] | None = None) -> list[Queued]:
        """One job per model and attack (every served model and configured attack unless named)."""
        return [
            self.enqueue(model, trigger=trigger, attack=attack)
            for model in (models if models is not None else self.models())
            for attack in (attacks or self.config.attacks)
        ]

    def enqueue_new_versions(self) -> list[Queued]:
        """Jobs for the served versions never audited under the current settings."""
        return [q for q in self.enqueue_all("new_version") if q.created]
