"""The store stays whole when the process running an audit is killed with SIGKILL, and the job goes
back to the queue when its lease expires."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from audit.store import AuditStore, audit_points, audit_samples, audit_sanity

pytestmark = pytest.mark.system  # a worker process killed with SIGKILL


def test_sigkill_mid_audit_leaves_no_partial_rows_and_the_job_is_queued_again_when_its_lease_expires(tiny_repo, tmp_path):
    url = f"sqlite:///{tmp_path / 'audits.sqlite'}"
    base = [
        sys.executable, "-m", "medrobust", "audit", "run", "--model-repo", str(tiny_repo.path), "--dataset",
        tiny_repo.dataset_spec, "--database-url", url, "--artefacts-dir", str(tmp_path / "art"), "--no-progress",
        "--samples", "6", "--models", tiny_repo.baseline,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # A complete run first: it must survive the crash of the next one untouched.
    done = subprocess.run(base + ["--epsilons", "0", "0.01", "--steps", "1", "--json"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    store = AuditStore(url)
    (complete,) = store.list_runs()
    before = {t.name: _count(store, t) for t in (audit_points, audit_samples, audit_sanity)}
    # A long run (many steps, the full grid), killed once it is under way.
    victim = subprocess.Popen(base + ["--steps", "400", "--restarts", "3"], env={**env, "MEDROBUST_AUDIT_LEASE_SECONDS": "2"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not store.list_runs(status="running"):
            assert victim.poll() is None, "the audit ended before it could be killed"
            time.sleep(0.5)
        (running,) = store.list_runs(status="running")
        time.sleep(3)  # well into the attack
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    reopened = AuditStore(url)  # the next start
    deadline = time.monotonic() + 30
    while not (expired := reopened.expire_leases()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert expired == {running.id: "queued"}
    assert reopened.get_run(running.id).status == "queued"
    assert reopened.get_run(running.id).error.startswith("interrupted: the lease of")
    assert {t.name: _count(reopened, t) for t in (audit_points, audit_samples, audit_sanity)} == before
    assert all(_count(reopened, t, running.id) == 0 for t in (audit_points, audit_samples, audit_sanity))
    assert reopened.get_run(complete.id).status == "succeeded" and len(reopened.get_run(complete.id).points) == 2
    with reopened.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA integrity_check")).scalar_one() == "ok"
    reopened.close()
    store.close()


def _count(store, table, run_id=None):
    query = sa.select(sa.func.count()).select_from(table)
    if run_id is not None:
        query = query.where(table.c.run_id == run_id)
    with store.engine.connect() as conn:
        return conn.execute(query).scalar_one()
