"""The audit store as the front end reads it: the `service.audits_web.AuditReader` the composition
root hands the Audits pages, so the front end shows runs without importing the audit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.store import AuditStore, RunNotFound, RunRecord


@dataclass(frozen=True)
class AuditPage:
    """What the Audits page shows beside a succeeded run."""

    partner: RunRecord | None
    header: list[str]
    table: list[list[str]]
    warning: str | None
    class_names: tuple[str, ...] = ()  # the audit set's classes: chance level is 1/len


@dataclass(frozen=True)
class StoreReader:
    """Runs from `store`; `runner` (None beside a separate audit worker) starts new ones; `coverage`
    (None: not known here) lists every served model's audit set (audit.audit_sets.Coverage)."""

    store: AuditStore
    artefacts_dir: Path
    runner: Any = None
    coverage: Callable[[], Any] | None = None

    @property
    def can_submit(self) -> bool:
        return self.runner is not None

    def submit(self, model: str) -> int:
        """Start an audit of `model`; raises AuditInProgress (409) while one runs."""
        if self.runner is None:
            raise RuntimeError("expected a runner to start audits, got none; check can_submit first")
        return self.runner.submit(model, trigger="api")

    def unauditable(self) -> list[dict[str, str]]:
        """The served models no audit set covers ({"model", "task"}): never audited until one is named."""
        if self.coverage is None:
            return []
        return [{"model": c.model, "task": c.task} for c in self.coverage() if c.dataset is None]

    def active(self) -> dict[str, int]:
        return self.runner.active() if self.runner is not None else {}

    def list_runs(self, *, model: str | None = None, status: str | None = None, limit: int = 100) -> tuple[RunRecord, ...]:
        return self.store.list_runs(model=model, status=status, limit=limit)

    def get_run(self, run_id: int) -> RunRecord | None:
        try:
            return self.store.get_run(run_id)
        except RunNotFound:
            return None

    def page(self, run: RunRecord) -> AuditPage:
        from audit.report import degenerate_warning, dominant_class, points_table

        header, table = points_table(run)
        names = tuple(self.store.audit_set(run.audit_set).class_names) if run.audit_set else ()
        return AuditPage(
            self.store.partner_run(run), header, table, degenerate_warning(run, dominant_class(self.store, run)), names
        )

    def picture(self, run: RunRecord, name: str) -> Path | None:
        """A report picture of a succeeded run (`accuracy.png` or `examples.png`), or None.

        Only read: the worker draws a run's report once, when the run ends (`audit report RUN_ID`
        redraws one). A page request never draws: pyplot on request threads, and a half-written
        file served to a reader, are what this avoids."""
        from audit.report import EXAMPLES, FIGURE, report_dir

        if name not in (FIGURE, EXAMPLES) or run.status != "succeeded":
            return None
        path = report_dir(run, self.artefacts_dir) / name
        return path if path.is_file() else None
