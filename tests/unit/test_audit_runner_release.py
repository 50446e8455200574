"""A database that goes away while a job runs: the outcome is written once it is back, within a bound;
past the bound the worker gives up and the job's lease expiring puts it back (no run stays running)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from audit.runner import AuditRunner
from audit.store import AuditStore
from training.contract.config import AuditConfig

CARD = {"name": "demo-resnet50-baseline", "task": "demo", "class_names": ["a", "b"], "num_classes": 2}


class _Predictor:
    backend_name = "stub"


class _AwayStore(AuditStore):
    """A real SQLite store whose next `away` writes of an outcome fail as a stopped PostgreSQL's do."""

    away = 2

    def fail_run(self, *args, **kwargs):
        if self.away:
            self.away -= 1
            raise sa.exc.OperationalError("UPDATE audit_runs", {}, ConnectionRefusedError("server closed the connection"))
        return super().fail_run(*args, **kwargs)


def _unreadable(spec):
    raise ValueError(f"{spec}: expected a dataset, found nothing there")


def _job(store, runner):
    run_id = store.enqueue(model="demo-resnet50-baseline", version=1, card=CARD, backend="stub", attack="linf_pgd",
                           config=runner.run_config()).run_id
    return store.claim(60, run_ids=(run_id,))


def test_the_outcome_is_written_once_the_database_is_back(tmp_path, monkeypatch):
    monkeypatch.setattr("audit.runner.time.sleep", lambda _seconds: None)  # the retries' back-off, without waiting
    store = _AwayStore(f"sqlite:///{tmp_path / 'audits.sqlite'}")
    runner = AuditRunner(AuditConfig(dataset="folder:/nowhere"), _Predictor(), store, load_dataset=_unreadable)
    outcome = runner.carry_out(_job(store, runner))
    assert (outcome.status, store.away) == ("failed", 0)  # written at the third try
    run = store.get_run(outcome.run_id)
    assert run.status == "failed" and run.error == "ValueError: folder:/nowhere: expected a dataset, found nothing there"
    assert store.queue_stats().running == 0


def test_past_the_bound_the_lease_puts_the_job_back(tmp_path, monkeypatch):
    monkeypatch.setattr("audit.runner.time.sleep", lambda _seconds: None)
    store = _AwayStore(f"sqlite:///{tmp_path / 'audits.sqlite'}")
    store.away = 10**6  # the database never comes back within the bound
    runner = AuditRunner(AuditConfig(dataset="folder:/nowhere", lease_seconds=1), _Predictor(), store,
                         load_dataset=_unreadable, outcome_retry_seconds=0)
    job = _job(store, runner)
    with pytest.raises(sa.exc.OperationalError):
        runner.carry_out(job)
    with store.engine.begin() as conn:  # the lease ran out meanwhile
        conn.execute(sa.text("UPDATE audit_jobs SET lease_expires_at = 0"))
    assert store.expire_leases() == {job.run_id: "queued"}
    assert store.get_run(job.run_id).status == "queued"
