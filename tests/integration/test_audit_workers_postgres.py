"""Three `medrobust audit worker` processes on one real PostgreSQL carry out twelve jobs, one killed mid-job.

Each job's run exists exactly once and succeeds; the killed worker's job is finished by another
once its lease expires (attempt 2, said so); no run stays running and no counter is doubled. Needs
MEDROBUST_TEST_POSTGRES_URL (.ci/run starts Debian's PostgreSQL and sets it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import sqlalchemy as sa

from audit.runner import AuditRunner
from audit.store import AuditStore, audit_jobs
from training.contract.config import AttackConfig, AuditConfig
from training.contract.repository import list_models

_PG = os.environ.get("MEDROBUST_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.system,  # worker processes, one killed with SIGKILL
    pytest.mark.postgres,
    pytest.mark.skipif(not _PG, reason="MEDROBUST_TEST_POSTGRES_URL not set (.ci/run starts Debian's PostgreSQL and sets it)"),
]
LEASE_SECONDS = 6
SEEDS = range(6)  # 2 models x 6 seeds: 12 jobs


@pytest.fixture
def postgres_url():
    schema = f"audit_workers_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield sa.engine.make_url(_PG).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _queue_jobs(store: AuditStore, repo) -> int:
    """Twelve small jobs (8 images, 2 epsilons, 5 steps): each model under six seeds."""
    queued = 0
    for model in list_models(repo):
        for seed in SEEDS:
            config = AuditConfig(dataset="synthetic:240", samples=8, seed=seed,
                                 attack=AttackConfig(epsilons=("0", "0.02"), steps=5, batch_size=4, noise_check=False, seed=seed))
            queued += store.enqueue(
                model=model.name, version=model.versions[-1], card=model.card, backend="embedded", attack="linf_pgd",
                config=AuditRunner(config, None, store).run_config(), trigger="cli",
            ).created
    return queued


def _start_worker(tiny_repo, url: str, tmp_path, index: int) -> tuple[subprocess.Popen, int]:
    """A worker process whose output goes to worker-INDEX.log; its metrics port, read from its first line."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MEDROBUST_AUDIT_POLL_SECONDS": "3600"}
    path = tmp_path / f"worker-{index}.log"
    with open(path, "w") as log:  # the child keeps its own descriptor
        worker = subprocess.Popen(
            [sys.executable, "-m", "medrobust", "audit", "worker", "--model-repo", str(tiny_repo.path), "--dataset",
             tiny_repo.dataset_spec, "--database-url", url, "--artefacts-dir", str(tmp_path / f"artefacts-{index}"),
             "--metrics-port", "0", "--lease-seconds", str(LEASE_SECONDS), "--schedule", "0 0 1 1 *", "--no-progress"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 240
    while not (port := re.search(r"audit worker: .* on http://[^:]+:(\d+)/metrics", path.read_text())):
        assert worker.poll() is None and time.monotonic() < deadline, f"worker {index} did not start: {path.read_text()[-2000:]}"
        time.sleep(0.5)
    return worker, int(port.group(1))


def _runs_total(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("medrobust_audit_runs_total{") and 'status="succeeded"' in line)


def test_three_workers_carry_out_twelve_jobs_once_each_and_a_killed_workers_job_is_finished(tiny_repo, postgres_url, tmp_path):
    store = AuditStore(postgres_url)
    assert _queue_jobs(store, tiny_repo.path) == 12
    assert _queue_jobs(store, tiny_repo.path) == 0  # the same jobs again: none queued twice
    workers, ports = [], []
    try:
        for index in range(3):
            worker, port = _start_worker(tiny_repo, postgres_url, tmp_path, index)
            workers.append(worker)
            ports.append(port)
        # Kill one worker while it holds a job.
        deadline = time.monotonic() + 240
        victim = None
        while victim is None and time.monotonic() < deadline:
            for run in store.list_runs(status="running"):
                pid = int(run_owner(store, run.id).split(":")[1])
                victim = next((w for w in workers if w.pid == pid), None)
                if victim is not None:
                    victim_run = run.id
                    break
            time.sleep(0.2)
        assert victim is not None, "no worker was seen holding a job"
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        # The others finish everything, the victim's job once its lease has expired.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stats = store.queue_stats()
            if stats.queued == 0 and stats.running == 0:
                break
            time.sleep(1.0)
        runs = store.list_runs()
        assert len(runs) == 12 and {r.status for r in runs} == {"succeeded"}, [(r.id, r.status, r.error) for r in runs]
        with store.engine.connect() as conn:
            per_run = conn.execute(sa.select(audit_jobs.c.run_id, sa.func.count()).group_by(audit_jobs.c.run_id)).all()
        assert len(per_run) == 12 and all(count == 1 for _, count in per_run)  # one job per run, one run per job
        killed = store.get_run(victim_run)
        assert killed.attempt >= 2 and killed.note.startswith("restarted after interruption")
        assert run_owner(store, victim_run).split(":")[1] != str(victim.pid)  # finished by another worker
        # Counters read from the store, in every surviving worker: 12 succeeded runs, none twice.
        alive = [port for worker, port in zip(workers, ports) if worker is not victim]
        assert [_runs_total(port) for port in alive] == [12.0, 12.0]
        assert sum(store.run_counts().values()) == 12
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
        store.close()
    assert all(w.returncode == 0 for w in workers if w is not victim), [w.returncode for w in workers]


def run_owner(store: AuditStore, run_id: int) -> str:
    with store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT owner FROM audit_runs WHERE id = :id"), {"id": run_id}).scalar_one()

