"""Audit load benchmark: the front end's predict latency while audit workers attack the same TF Serving.

    python -m bench.audit_load [--model-repo DIR] [--requests 60] [--max-rps 2] [--workers 2]

One TF Serving stand-in (tests/integration/tfserving_fake.py, the real gRPC API over the real
SavedModels, in this process) serves the front end (`medrobust serve --tf-serving`, gunicorn) and,
in the shared phases, the audit workers (`medrobust audit worker --tf-serving`, separate processes,
one SQLite store). Side by side, in one run, one client's sequential predictions (`?explain=none`,
a 64 px PNG):
  idle         no worker running (measured before and after the busy phases; both are printed)
  audit        --workers workers attacking long PGD jobs through the front end's stand-in, no ceiling
  audit+cap    the same with `--max-rps` per worker
  audit+own    the ceiling on, the workers on a second stand-in of their own: deploy/README.md's
               advice (the audit's own TF Serving replicas)
The front end's side (this process, its stand-in, the front end) runs on the first CPU in every
phase; the audit's own stand-in and its workers run on the other CPUs, which stand in for the
replica's own hardware (on one CPU the last phase is left out). Prints p50/p99 per phase, then one
JSON line of ratios to idle. The goal: p99 while auditing at most 1.25x idle with the ceiling on,
in the recommended deployment (`goal_met`; `shared_goal_met` is the same on the shared stand-in).
Without --model-repo a ResNet-50 baseline is trained for the run at 64 px (a minute or two).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.frontend import Frontend
from bench.serving import _bench_repo, _Client, _image_png, _percentile


def _phase(name: str, client: _Client, requests: int) -> dict:
    latencies = [client.post() for _ in range(requests)]
    return {"name": name, "n": requests, "p50_ms": _percentile(latencies, 50) * 1000,
            "p99_ms": _percentile(latencies, 99) * 1000, "max_ms": max(latencies) * 1000}


def _pin_process(cpus: set[int]) -> set[int]:
    """Every thread of this process (TensorFlow's pools included, which exist by now) on `cpus`;
    returns the CPUs the process had. Threads and children started later inherit the setting."""
    before = os.sched_getaffinity(0)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that has ended since the listing
            pass
    return before


def _on(cpus: set[int] | None) -> list[str]:
    """The prefix that runs a command on `cpus` (none: where this process runs). taskset, not a
    preexec_fn: this process has threads (TensorFlow's, the stand-in's), and forking with them is unsafe."""
    return [] if cpus is None else ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus)))]


def _own_replica(repo: Path, cpus: set[int], scratch: Path) -> tuple[subprocess.Popen, str]:
    """A second TF Serving stand-in, for the audit only, on `cpus`: the deploy/README.md advice
    (the audit's own replicas) on one machine, its CPUs standing in for the replica's own hardware."""
    from bench.frontend import free_port

    port = free_port()
    log = open(scratch / "audit-replica.log", "wb")
    process = subprocess.Popen(
        [*_on(cpus), sys.executable, "-m", "tests.integration.tfserving_fake", "--port", str(port),
         "--rest_api_port", str(free_port()), "--model_config_file", str(repo / "models.config")],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 300  # TensorFlow's import and every model's load, on fewer CPUs
    while "TF Serving stand-in: gRPC on" not in (scratch / "audit-replica.log").read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop([process])
            raise SystemExit(f"the audit's own TF Serving stand-in did not start:\n"
                             f"{(scratch / 'audit-replica.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return process, f"127.0.0.1:{port}"


def _workers(count: int, address: str, repo: Path, url: str, scratch: Path, max_rps: float | None,
             cpus: set[int] | None = None) -> list[subprocess.Popen]:
    # The mounted repository supplies the model cards and the served names, as in deploy/compose.yaml.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MEDROBUST_AUDIT_POLL_SECONDS": "3600", "MEDROBUST_MODEL_REPO": str(repo)}
    ceiling = ["--max-rps", f"{max_rps:g}"] if max_rps else []
    return [
        subprocess.Popen(
            [*_on(cpus), sys.executable, "-m", "medrobust", "audit", "worker", "--tf-serving", address, "--dataset", "synthetic:240",
             "--database-url", url, "--artefacts-dir", str(scratch / "artefacts"), "--metrics-port", "0",
             "--schedule", "0 0 1 1 *", "--no-progress", *ceiling],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def _until_attacking(store, count: int, workers: list[subprocess.Popen], timeout: float = 600) -> None:
    """Wait until `count` runs have attacked past their first batch (the workers are loaded and busy)."""
    deadline = time.monotonic() + timeout
    while sum(1 for *_, done, _total in store.running_progress() if done > 0) < count:
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            raise SystemExit("the audit workers did not start attacking")
        time.sleep(0.5)


def _stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(120)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, help="repository to serve (default: a 64 px ResNet-50 trained for the run)")
    parser.add_argument("--requests", type=int, default=60, help="timed predictions per phase")
    parser.add_argument("--workers", type=int, default=2, help="audit workers in the busy phases")
    parser.add_argument("--max-rps", type=float, default=2.0, help="the ceiling per worker in the audit+cap phase")
    parser.add_argument("--samples", type=int, default=64, help="images per audit job (long enough to outlast a phase)")
    parser.add_argument("--steps", type=int, default=200, help="PGD steps per image and epsilon")
    parser.add_argument("--batch-size", type=int, default=16, help="images per call to TF Serving in the audit")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from audit.runner import AuditRunner
    from audit.store import AuditStore
    from tests.integration.tfserving_fake import FakeTFServing
    from training.contract import repository
    from training.contract.config import AttackConfig, AuditConfig

    scratch_dir = tempfile.TemporaryDirectory(prefix="medrobust-bench-audit-load-")
    scratch = Path(scratch_dir.name)
    restore: set[int] | None = None
    try:
        repo = args.model_repo or _bench_repo(scratch, 64, attention=False)
        if not (repo / repository.MODELS_CONFIG).is_file():
            repository.write_models_config(repo)
        model = next(m for m in repository.list_models(repo) if not m.card["attention"])
        size = int(model.card["input_size"][0])
        # The front end's side (this process, its TF Serving stand-in, the front end) on the first CPU in
        # every phase; the audit's own replica and its workers, in the last phase, on the others.
        cpus = sorted(os.sched_getaffinity(0))
        front_cpus, audit_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), None)
        restore = _pin_process(front_cpus)
        fake = FakeTFServing(repo / repository.MODELS_CONFIG)
        address = fake.start()
        url = f"sqlite:///{scratch / 'audits.sqlite'}"
        store = AuditStore(url)

        def queue(seed: int) -> None:
            """One long PGD job per worker (distinct seeds: distinct jobs)."""
            for i in range(args.workers):
                config = AuditConfig(dataset="synthetic:240", samples=args.samples, seed=seed + i, attack=AttackConfig(
                    epsilons=("0.01", "0.02", "0.04", "0.08"), steps=args.steps, batch_size=args.batch_size, noise_check=False,
                    seed=seed + i))
                store.enqueue(model=model.name, version=model.versions[-1], card=model.card, backend="tfserving",
                              attack="linf_pgd", config=AuditRunner(config, None, store).run_config(), trigger="cli")

        frontend = Frontend(["--tf-serving", address, "--workers", "1", "--threads", "4"], scratch,
                            env={"MEDROBUST_MODEL_REPO": str(repo)})
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"model {model.name} v{model.versions[-1]} at {size}x{size} on the TF Serving stand-in; {args.workers} workers, "
              f"ceiling {args.max_rps:g} calls/s each, {args.batch_size} images a call; "
              f"{args.requests} predictions per phase; load average {load} on {os.cpu_count()} CPUs", file=sys.stderr)
        rows = []
        client = None
        try:
            client = _Client(frontend.port, f"/api/v1/models/{model.name}/predict?explain=none", _image_png(size))
            deadline = time.monotonic() + 180
            while True:
                try:
                    client.post()
                    break
                except (OSError, RuntimeError):
                    if time.monotonic() > deadline or frontend.exited():
                        raise frontend.failure("the front end did not answer within 180 s") from None
                    client.close()
                    time.sleep(0.5)
            for _ in range(5):
                client.post()
            rows.append(_phase("idle", client, args.requests))
            phases = [("audit", None, 100, None), ("audit+cap", args.max_rps, 200, None)]
            if audit_cpus:
                phases.append(("audit+own", args.max_rps, 300, audit_cpus))
            for name, ceiling, seed, own in phases:
                queue(seed)
                replica, target = _own_replica(repo, own, scratch) if own else (None, address)
                workers = _workers(args.workers, target, repo, url, scratch, ceiling, own)
                try:
                    _until_attacking(store, args.workers, workers)
                    rows.append(_phase(name, client, args.requests))
                    calls = fake.calls.copy()
                finally:
                    _stop(workers)
                    if replica is not None:
                        _stop([replica])
                for run in store.list_runs(status="queued"):
                    store.cancel(run.id)
                print(f"{name}: the front end's TF Serving calls so far {dict(calls)}", file=sys.stderr)
            rows.append(_phase("idle-after", client, args.requests))
        finally:
            if client is not None:
                client.close()
            frontend.stop()
            fake.stop()
            store.close()
        print(f"{'phase':<12}{'n':>5}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for r in rows:
            print(f"{r['name']:<12}{r['n']:>5}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}{r['max_ms']:>10.1f}")
        by = {r["name"]: r for r in rows}
        idle_p50 = (by["idle"]["p50_ms"] + by["idle-after"]["p50_ms"]) / 2
        idle_p99 = (by["idle"]["p99_ms"] + by["idle-after"]["p99_ms"]) / 2
        ratios = {
            "model": model.name, "input_size": size, "workers": args.workers, "max_rps": args.max_rps,
            "batch_size": args.batch_size,
            "audit_p50_over_idle": round(by["audit"]["p50_ms"] / idle_p50, 3),
            "audit_p99_over_idle": round(by["audit"]["p99_ms"] / idle_p99, 3),
            "capped_p50_over_idle": round(by["audit+cap"]["p50_ms"] / idle_p50, 3),
            "capped_p99_over_idle": round(by["audit+cap"]["p99_ms"] / idle_p99, 3),
            "shared_goal_met": by["audit+cap"]["p99_ms"] / idle_p99 <= 1.25,
        }
        if "audit+own" in by:
            ratios["own_replica_p50_over_idle"] = round(by["audit+own"]["p50_ms"] / idle_p50, 3)
            ratios["own_replica_p99_over_idle"] = round(by["audit+own"]["p99_ms"] / idle_p99, 3)
        # The goal holds for the deployment deploy/README.md recommends: the ceiling on, the audit's own replica.
        ratios["goal_met"] = ratios.get("own_replica_p99_over_idle", float("inf")) <= 1.25
        print(json.dumps(ratios))
        return 0
    finally:
        if restore is not None:
            _pin_process(restore)
        scratch_dir.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
