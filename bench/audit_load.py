"""Audit load benchmark: the front end's predict latency while audit workers attack the same TF Serving.

    python -m bench.audit_load [--model-repo DIR] [--requests 60] [--max-rps 2] [--workers 2]

One TF Serving stand-in (tests/integration/tfserving_fake.py, the real gRPC API over the real
SavedModels, in this process) serves the front end (`medrobust serve --tf-serving`, gunicorn) and
the audit workers (`medrobust audit worker --tf-serving`, separate processes, one SQLite store).
Side by side, in one run, one client's sequential predictions (`?explain=none`, a 64 px PNG):
  idle         no worker running (measured before and after the busy phases; both are printed)
  audit        --workers workers, each attacking a long PGD job, no ceiling
  audit+cap    the same with `--max-rps` per worker
Prints p50/p99 per phase, then one JSON line of ratios to idle. The goal: p99 while auditing with
the ceiling at most 1.25x idle. Without --model-repo a ResNet-50 baseline is trained for the run at
64 px (the tests' size; a minute or two).
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


def _workers(count: int, address: str, repo: Path, url: str, scratch: Path, max_rps: float | None) -> list[subprocess.Popen]:
    # The mounted repository supplies the model cards and the served names, as in deploy/compose.yaml.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MEDROBUST_AUDIT_POLL_SECONDS": "3600", "MEDROBUST_MODEL_REPO": str(repo)}
    ceiling = ["--max-rps", f"{max_rps:g}"] if max_rps else []
    return [
        subprocess.Popen(
            [sys.executable, "-m", "medrobust", "audit", "worker", "--tf-serving", address, "--dataset", "synthetic:240",
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
    try:
        repo = args.model_repo or _bench_repo(scratch, 64, attention=False)
        if not (repo / repository.MODELS_CONFIG).is_file():
            repository.write_models_config(repo)
        model = next(m for m in repository.list_models(repo) if not m.card["attention"])
        size = int(model.card["input_size"][0])
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
            for name, ceiling, seed in (("audit", None, 100), ("audit+cap", args.max_rps, 200)):
                queue(seed)
                workers = _workers(args.workers, address, repo, url, scratch, ceiling)
                try:
                    _until_attacking(store, args.workers, workers)
                    rows.append(_phase(name, client, args.requests))
                    calls = fake.calls.copy()
                finally:
                    _stop(workers)
                for run in store.list_runs(status="queued"):
                    store.cancel(run.id)
                print(f"{name}: TF Serving calls so far {dict(calls)}", file=sys.stderr)
            rows.append(_phase("idle-after", client, args.requests))
            client.close()
        finally:
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
            "goal_met": by["audit+cap"]["p99_ms"] / idle_p99 <= 1.25,
        }
        print(json.dumps(ratios))
        return 0
    finally:
        scratch_dir.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
