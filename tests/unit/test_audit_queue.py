"""The job queue in the store and the enqueuing rules, on SQLite and PostgreSQL (no model needed).

A job is never queued twice (two processes asking at once get one job), new versions are claimed
before the schedule's re-audits, the schedule enqueues from one worker only, cancellation and
retries end where they should, and a restart does not audit a finished version again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from audit.jobs import Enqueuer
from audit.runner import AuditRunner
from audit.scheduler import AuditWorker
from audit.store import AuditStore, QueueStats
from tests.audit_runs import CARD, make_result
from training.contract.config import AttackConfig, AuditConfig

MODELS = ("demo-resnet50-attention", "demo-resnet50-baseline")


class _Served:
    """The served models a worker sees (no model is called: nothing here runs an audit)."""

    backend_name = "embedded"

    def __init__(self, latest: int = 1):
        self.latest = latest

    def list_models(self):
        return tuple(SimpleNamespace(name=m, latest=self.latest, versions=(self.latest,)) for m in MODELS)

    def model_info(self, model):
        return SimpleNamespace(name=model, latest=self.latest, versions=(self.latest,))

    def model_card(self, model, version=None):
        return {**CARD, "attention": model.endswith("attention")}


def _enqueuer(url: str, *, owner: str | None = None, served: _Served | None = None, **config) -> Enqueuer:
    config = AuditConfig(**{"dataset": "synthetic:240", "samples": 4, "database_url": url,
                            "attack": AttackConfig(epsilons=("0", "0.01"), steps=1), **config})
    store = AuditStore(url, owner=owner)
    served = served or _Served()
    return Enqueuer(config, served, store, AuditRunner(config, served, store))


def test_the_same_job_asked_for_by_two_processes_at_once_is_queued_once(database_url):
    code = (
        "import sys; from audit.store import AuditStore; s = AuditStore(sys.argv[1]); "
        "q = s.enqueue(model='m', version=1, card={}, backend='embedded', attack='linf_pgd', config={'steps': 1}, trigger='api'); "
        "print(q.run_id, q.created)"
    )
    AuditStore(database_url).close()  # migrated once, so both processes race on the insert alone
    procs = [subprocess.Popen([sys.executable, "-c", code, database_url], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    answers = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({run_id for run_id, _ in answers}) == 1  # every process names the one run
    assert sorted(created for _, created in answers) == ["False", "False", "False", "True"]
    store = AuditStore(database_url)
    stats = store.queue_stats()
    assert (stats.queued, stats.running, stats.failed) == (1, 0, 0) and stats.oldest_queued_age_seconds >= 0
    assert [r.status for r in store.list_runs()] == ["queued"]
    store.close()


def test_a_new_version_is_claimed_before_the_schedules_reaudits(database_url):
    store = AuditStore(database_url)
    scheduled = store.enqueue(model="a", version=1, card=CARD, backend="e", attack="linf_pgd", config={}, trigger="schedule")
    new = store.enqueue(model="b", version=2, card=CARD, backend="e", attack="linf_pgd", config={}, trigger="new_version")
    asked = store.enqueue(model="c", version=1, card=CARD, backend="e", attack="linf_pgd", config={}, trigger="api")
    assert [store.claim(60).run_id for _ in range(3)] == [asked.run_id, new.run_id, scheduled.run_id]
    assert store.claim(60) is None
    assert store.queue_stats().running == 3 and {r[0] for r in store.running_progress()} == {"a", "b", "c"}
    store.close()


def test_cancel_a_queued_run_at_once_and_a_running_one_at_its_next_checkpoint(database_url):
    store = AuditStore(database_url)
    queued = store.enqueue(model="a", version=1, card=CARD, backend="e", attack="linf_pgd", config={})
    assert store.cancel(queued.run_id) == "cancelled"
    assert store.claim(60) is None  # nothing left to claim
    assert store.get_run(queued.run_id).status == "cancelled"
    running = store.start_run(model="a", version=1, card=CARD, backend="e", attack="linf_pgd", config={})
    job_id = next(iter(store.engine.connect().execute(__import__("sqlalchemy").text(
        f"SELECT id FROM audit_jobs WHERE run_id = {running}")).scalars()))
    assert store.renew(job_id, 60) == "held"
    assert store.cancel(running) == "cancelling"  # the worker stops it
    assert store.renew(job_id, 60) == "cancel" and store.report_progress(running, 1, 4, None) == "cancel"
    store.fail_run(running, "cancelled while running", status="cancelled")
    assert store.get_run(running).status == "cancelled"
    assert store.cancel(running) is None  # ended: nothing more to do
    store.close()


def test_retries_end_in_failed_with_the_reason_after_the_last_attempt(database_url):
    store = AuditStore(database_url)
    queued = store.enqueue(model="a", version=1, card=CARD, backend="e", attack="linf_pgd", config={}, max_attempts=2)
    assert store.claim(60).attempt == 1
    assert store.retry_run(queued.run_id, "BackendUnavailable: TF Serving did not answer") == "queued"
    assert store.get_run(queued.run_id).error == "queued again: BackendUnavailable: TF Serving did not answer"
    assert store.claim(60).attempt == 2
    assert store.retry_run(queued.run_id, "BackendUnavailable: again") == "failed"
    run = store.get_run(queued.run_id)
    assert run.status == "failed" and run.error == "gave up after 2 attempts; the last: BackendUnavailable: again"
    assert store.queue_stats() == QueueStats(0, 0, 1, None)
    store.close()


def test_a_worker_that_lost_its_lease_writes_nothing(database_url):
    from audit.store import LeaseLost

    mine = AuditStore(database_url, owner="worker-a")
    other = AuditStore(database_url, owner="worker-b")
    run_id = mine.start_run(model="a", version=1, card=CARD, backend="e", attack="linf_pgd", config={}, lease_seconds=0.01)
    time.sleep(0.05)  # past the lease's end, however fast the line above ran
    assert other.expire_leases() == {run_id: "queued"}
    assert other.claim(60).run_id == run_id  # another worker has the job now
    with pytest.raises(LeaseLost, match="under worker-b"):
        mine.finish_run(run_id, make_result())
    other.finish_run(run_id, make_result())
    assert other.get_run(run_id).status == "succeeded" and other.get_run(run_id).attempt == 2
    mine.close()
    other.close()


def test_two_workers_with_the_same_schedule_enqueue_each_job_once(database_url):
    first, second = _enqueuer(database_url, owner="worker-a"), _enqueuer(database_url, owner="worker-b")
    workers = [AuditWorker(e.config, e.runner, e, registry=None, serve_metrics=False) for e in (first, second)]
    # The cron fires on both at once; only the lease holder enqueues.
    assert len(workers[0].scheduled()) == 2 and workers[1].scheduled() == []
    assert workers[0].leader and not workers[1].leader
    # Its runs finish before the next firing: still one enqueuer, one job per model and firing.
    while job := first.store.claim(60):
        first.store.finish_run(job.run_id, make_result(model=job.model))
    assert workers[1].scheduled() == [] and len(workers[0].scheduled()) == 2
    assert len(first.store.list_runs()) == 4
    # The holder stops: the lease is given up and the other worker takes the schedule over.
    workers[0].stop()
    assert workers[1].check_new_versions() == [] and workers[1].leader
    first.store.close()
    second.store.close()


def test_a_restart_does_not_audit_a_finished_version_again_but_the_schedule_does(database_url):
    enqueuer = _enqueuer(database_url)
    store = enqueuer.store
    (first, _) = enqueuer.enqueue_all("startup")
    assert first.created
    while job := store.claim(60):
        store.finish_run(job.run_id, make_result(model=job.model))
    again = enqueuer.enqueue_all("startup")  # `up` again, `worker --now` again
    assert [(q.created, q.status) for q in again] == [(False, "succeeded")] * 2
    assert enqueuer.enqueue_new_versions() == []
    assert all(q.created for q in enqueuer.enqueue_all("schedule"))  # the periodic re-audit, on purpose
    # Other settings are another job: a larger audit set is audited.
    bigger = _enqueuer(database_url, samples=8)
    assert all(q.created for q in bigger.enqueue_all("startup"))
    # A new version is audited once, whatever came of it.
    newer = _enqueuer(database_url, served=_Served(latest=2))
    assert [q.version for q in newer.enqueue_new_versions()] == [2, 2]
    for run in newer.store.list_runs(status="queued"):
        assert newer.store.cancel(run.id) == "cancelled"
    assert newer.enqueue_new_versions() == []
    for e in (enqueuer, bigger, newer):
        e.store.close()


def test_a_model_without_an_audit_set_is_not_queued(database_url):
    enqueuer = _enqueuer(database_url)
    enqueuer.audit_set_for = lambda card: None if card["attention"] else "synthetic:240"
    queued = {q.model: q for q in enqueuer.enqueue_all("schedule")}
    assert queued["demo-resnet50-attention"].status == "no_audit_set" and queued["demo-resnet50-attention"].run_id is None
    assert queued["demo-resnet50-baseline"].created
    assert [r.config["dataset"] for r in enqueuer.store.list_runs()] == ["synthetic:240"]
    enqueuer.store.close()


def test_the_workers_health_says_when_its_store_is_unreachable(tmp_path):
    import json
    import urllib.error
    import urllib.request

    from prometheus_client import CollectorRegistry

    from audit.store import make_engine
    from tests.integration.serving import free_port

    enqueuer = _enqueuer(f"sqlite:///{tmp_path / 'audits.sqlite'}", metrics_port=0, metrics_host="127.0.0.1")
    worker = AuditWorker(enqueuer.config, enqueuer.runner, enqueuer, CollectorRegistry())
    worker.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=30) as answer:
            assert json.load(answer)["store"] == "ok"
        # The database goes away (a server that refuses connections).
        enqueuer.store.engine = make_engine(f"postgresql+psycopg2://medrobust:x@127.0.0.1:{free_port()}/audits?connect_timeout=2")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=30)
        doc = json.load(refused.value)
        refused.value.close()
        assert refused.value.code == 503 and (doc["status"], doc["store"]) == ("unhealthy", "unreachable")
    finally:
        worker.stop()
