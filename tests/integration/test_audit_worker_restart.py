"""A restarted audit worker: PID 1 again in the same container, with the same store and the same
PROMETHEUS_MULTIPROC_DIR. Each process here runs as PID 1 of its own PID namespace (`unshare`),
exactly as a container's entrypoint does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.system,  # whole processes in their own PID namespaces
    pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux's unshare is absent"),
]

CARD = {"task": "demo", "class_names": ["a", "b"], "num_classes": 2, "backbone": "resnet50", "attention": False}


def _as_pid_1(script: str, env: dict[str, str] | None = None) -> dict:
    """Run `script` as PID 1 of a new PID namespace; it prints one JSON line, returned parsed."""
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"cannot create a PID namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_left_running_by_the_previous_pid_1_is_not_taken_for_its_own_and_is_queued_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'audits.sqlite'}"
    started = _as_pid_1(f"""
        import json, os
        from audit.store import AuditStore
        store = AuditStore({url!r})
        run = store.start_run(model="demo-resnet50-baseline", version=1, card={CARD!r}, backend="embedded",
                              attack="linf_pgd", config={{}}, lease_seconds=1)
        print(json.dumps({{"pid": os.getpid(), "run": run}}))
        os._exit(0)  # killed mid-run: nothing finishes the run or gives it back
    """)
    assert started["pid"] == 1
    restarted = _as_pid_1(f"""
        import json, os, time
        from audit.store import AuditStore, LeaseLost
        from tests.audit_runs import make_result
        store = AuditStore({url!r})
        try:  # the same PID, another process start: the lease is not this process's
            store.finish_run({started["run"]}, make_result())
            mistaken = True
        except LeaseLost:
            mistaken = False
        time.sleep(1.2)
        expired = store.expire_leases()
        run = store.get_run({started["run"]})
        print(json.dumps({{"pid": os.getpid(), "mistaken": mistaken, "expired": list(expired.values()),
                          "status": run.status, "error": run.error}}))
    """)
    assert restarted["pid"] == 1 and restarted["mistaken"] is False
    assert (restarted["expired"], restarted["status"]) == (["queued"], "queued")
    assert restarted["error"].startswith("interrupted: the lease of") and restarted["error"].endswith("queued again")


def test_run_counters_are_not_doubled_by_a_kept_multiprocess_directory(tmp_path):
    url = f"sqlite:///{tmp_path / 'audits.sqlite'}"
    metrics_dir = tmp_path / "multiproc"
    metrics_dir.mkdir()
    script = f"""
        import json, os
        from prometheus_client import generate_latest
        from medrobust.compose import build_audit_stack
        from training.contract.config import AuditConfig
        stack = build_audit_stack(AuditConfig(database_url={url!r}, dataset="synthetic:30"), predictor=object())
        if os.environ.get("FAIL_ONE"):
            run = stack.store.start_run(model="demo-resnet50-baseline", version=1, card={CARD!r}, backend="embedded",
                                        attack="linf_pgd", config={{}})
            stack.store.fail_run(run, "boom")
        text = generate_latest(stack.registry).decode()
        line = next(l for l in text.splitlines() if l.startswith('medrobust_audit_runs_total{{') and 'status="failed"' in l)
        print(json.dumps({{"pid": os.getpid(), "failed": float(line.rsplit(" ", 1)[1])}}))
    """
    import os

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    assert _as_pid_1(script, {**env, "FAIL_ONE": "1"}) == {"pid": 1, "failed": 1.0}
    # The restart: PID 1 again, the directory kept, one failed run in the store.
    assert _as_pid_1(script, env) == {"pid": 1, "failed": 1.0}
