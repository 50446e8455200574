"""The audit store as the front end reads it: the `service.audits_web.AuditReader` the composition
root hands the Audits pages, so the front end shows runs without importing the audit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from audit.store import AuditStore, RunNotFound, RunRecord
from training.contract.errors import HttpError

if TYPE_CHECKING:  # the front end reads the store without importing the audit's worker side
    from audit.jobs import Enqueuer

F = TypeVar("F", bound=Callable[..., Any])
RETRY_AFTER_SECONDS = 30


class StoreUnavailable(HttpError):
    """The audit database does not answer (503, with Retry-After): the pages come back with it."""

    code = "store_unavailable"
    http_status = 503


def _store_answers(method: F) -> F:
    """`method`, with a database that does not answer turned into a 503 the client can retry, not a 500."""

    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(
                f"expected the audit database to answer, got {type(exc.orig).__name__ if exc.orig else 'no answer'}; "
                f"try again in {RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None

    return wrapped  # type: ignore[return-value]


class AuditInProgress(HttpError):
    """The same audit is already queued or running (the API answers 409 with its run)."""

    code = "audit_in_progress"
    http_status = 409


class AuditFinished(HttpError):
    """A finished run cannot be cancelled (409)."""

    code = "audit_finished"
    http_status = 409


@dataclass(frozen=True)
class AuditPage:
    """What the Audits page shows beside a succeeded run."""

    partner: RunRecord | None
    header: list[str]
    table: list[list[str]]
    warning: str | None
    class_names: tuple[str, ...] = ()  # the audit set's classes: chance level is 1/len
    clean: str = ""  # "clean accuracy a [lo, hi] (balanced b [lo, hi])"
    intervals_note: str = ""  # how every interval of the table was computed
    black_box: str | None = None  # why the run's figures are a query-only attack's, when they are


@dataclass(frozen=True)
class StoreReader:
    """Runs from `store`; `enqueuer` (an `audit.jobs.Enqueuer`; None beside a separate audit worker,
    whose front end has no audit configuration) queues new ones."""

    store: AuditStore
    artefacts_dir: Path
    enqueuer: Enqueuer | None = None
    coverage: Callable[[], Any] | None = None  # every served model's audit set (audit.audit_sets.Coverage); None: not known here

    @property
    def can_submit(self) -> bool:
        return self.enqueuer is not None

    @_store_answers
    def submit(self, model: str) -> int:
        """Queue an audit of `model` (a job per configured attack); returns the first run's id.

        Raises AuditInProgress (409) when that audit is already queued or running."""
        if self.enqueuer is None:
            raise RuntimeError("expected an enqueuer to queue audits, got none; check can_submit first")
        queued = self.enqueuer.enqueue_all("api", models=(model,))
        created = [q for q in queued if q.created]
        if not created:
            there = next((q for q in queued if q.run_id is not None), None)
            if there is None:
                raise AuditInProgress(f"no audit set for model {model!r}: nothing queued", code="no_audit_set", http_status=422)
            raise AuditInProgress(f"model {model!r} version {there.version} is already {there.status} (run {there.run_id})")
        run_id = created[0].run_id
        if run_id is None:  # a created job has its run (Enqueuer.enqueue); only a job not queued has none
            raise RuntimeError(f"expected the run of model {model!r}'s queued job, got none")
        return run_id

    @_store_answers
    def cancel(self, run_id: int) -> str | None:
        """Cancel a queued or running run: "cancelled" or "cancelling"; None if there is no such run.

        Raises AuditFinished (409) for a run that has already ended."""
        try:
            status = self.store.cancel(run_id)
        except RunNotFound:
            return None
        if status is None:
            ended = self.store.get_run(run_id).status
            raise AuditFinished(f"run {run_id} has already ended ({ended}); only a queued or running run can be cancelled")
        return status

    def unauditable(self) -> list[dict[str, str]]:
        """The served models no audit set covers ({"model", "task"}): never audited until one is named."""
        if self.coverage is None:
            return []
        return [{"model": c.model, "task": c.task} for c in self.coverage() if c.dataset is None]

    @_store_answers
    def active(self) -> dict[str, int]:
        """Models being audited now, with their running run's id."""
        return {r.model: r.id for r in reversed(self.store.list_runs(status="running"))}

    @_store_answers
    def list_runs(self, *, model: str | None = None, status: str | None = None, limit: int = 100) -> tuple[RunRecord, ...]:
        return self.store.list_runs(model=model, status=status, limit=limit)

    @_store_answers
    def get_run(self, run_id: int) -> RunRecord | None:
        try:
            return self.store.get_run(run_id)
        except RunNotFound:
            return None

    @_store_answers
    def page(self, run: RunRecord) -> AuditPage:
        from audit.report import (
            INTERVALS_NOTE,
            black_box_warning,
            clean_figures,
            degenerate_warning,
            dominant_class,
            points_table,
        )

        header, table = points_table(run)
        names = tuple(self.store.audit_set(run.audit_set).class_names) if run.audit_set else ()
        return AuditPage(
            self.store.partner_run(run), header, table, degenerate_warning(run, dominant_class(self.store, run)), names,
            clean=clean_figures(run), intervals_note=INTERVALS_NOTE, black_box=black_box_warning(run),
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
