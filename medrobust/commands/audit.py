"""`medrobust audit run|worker|enqueue|report` (no heavy imports at import time)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medrobust.commands import positive_int
from training.contract.attacks import attack_names
from training.contract.config import DEFAULT_MODEL_REPO, AttackConfig, AuditConfig, default_of, read_config

_audit = lambda name: default_of(AuditConfig, name)  # noqa: E731  (defaults are written once, on the config)
_attack = lambda name: default_of(AttackConfig, name)  # noqa: E731


def _common(parser: argparse.ArgumentParser, *, models: bool = True) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model-repo", type=Path,
                       help=f"model repository for the embedded backend (default: MEDROBUST_MODEL_REPO or {DEFAULT_MODEL_REPO})")
    where.add_argument("--tf-serving", metavar="HOST:PORT",
                       help="TF Serving's gRPC address, HOST:PORT or dns:///HOST:PORT (default: MEDROBUST_TF_SERVING)")
    parser.add_argument("--tf-serving-max-batch", type=positive_int,
                        help="TF Serving's max_batch_size: larger batches are split "
                             f"(MEDROBUST_TF_SERVING_MAX_BATCH, default {_audit('tf_serving_max_batch')})")
    parser.add_argument("--database-url", help=f"SQLAlchemy URL of the audit store (default: MEDROBUST_DATABASE_URL or {_audit('database_url')})")
    parser.add_argument("--artefacts-dir", type=Path,
                        help=f"where examples and reports go (default: MEDROBUST_AUDIT_ARTEFACTS or {_audit('artefacts_dir')})")
    if not models:
        return
    parser.add_argument("--dataset", help="KIND:PATH the audit set of every task the --audit-sets file does not name is drawn from "
                        "(default: MEDROBUST_AUDIT_DATASET, else each model's training data where it can be read here)")
    parser.add_argument("--audit-sets", type=Path, metavar="FILE",
                        help='TOML file of each task\'s audit set: [tasks] derm = "ham10000:/data/ham10000" (default: MEDROBUST_AUDIT_SETS)')
    parser.add_argument("--models", nargs="+", metavar="M", help="models to audit (default: every served model)")
    parser.add_argument("--served-models", nargs="+", metavar="M",
                        help="the models TF Serving serves, when no --model-repo or MEDROBUST_MODEL_REPO lists them (default: MEDROBUST_MODELS)")
    parser.add_argument("--epsilons", nargs="+", metavar="EPS", help="epsilon grid on [0,1] pixels (default: the paper's 0 ... 0.32)")
    parser.add_argument(
        "--attack", nargs="+", metavar="ATTACK", choices=attack_names(),
        help=f"one or more of {', '.join(attack_names())}, each its own run (default: linf_pgd, the paper's; "
        "ensemble = apgd_ce, apgd_t, then square on the images still standing)",
    )
    parser.add_argument("--steps", type=positive_int, help="iterations per image and epsilon (default: 20 for PGD, "
                        "step size 2.5 epsilon / steps; 100 for APGD)")
    parser.add_argument("--queries", type=positive_int, help=f"Square Attack's queries per image (default {_attack('queries')})")
    parser.add_argument("--samples", type=positive_int, help=f"audit set size (default {_audit('samples')})")
    parser.add_argument("--restarts", type=positive_int, help=f"random restarts per image, worst case counts (default {_attack('restarts')})")
    parser.add_argument("--batch-size", type=positive_int, help=f"images per request to the model server (default {_attack('batch_size')})")
    parser.add_argument("--seed", type=int, help="seed of the audit set, the dataset split and the attacks' random draws (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--max-rps", type=float, metavar="N",
                        help="at most N calls a second to the model server from this process (MEDROBUST_AUDIT_MAX_RPS; default: no ceiling)")


def register(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="attack the served models with PGD and record their robust accuracy")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="queue an audit of each model and carry it out in this process now (for cron or a Kubernetes CronJob)")
    _common(run)
    run.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    run.set_defaults(handler=_run, check=config_from_args)

    worker = sub.add_parser("worker", help="carry out queued audits; queue them on a schedule and for every new version; serve /metrics")
    _common(worker)
    worker.add_argument("--schedule", help=f"5-field cron expression (default: MEDROBUST_AUDIT_SCHEDULE or {_audit('schedule')!r})")
    worker.add_argument("--metrics-port", type=int,
                        help=f"port of /metrics and /healthz (default: MEDROBUST_AUDIT_METRICS_PORT or {_audit('metrics_port')})")
    worker.add_argument("--now", action="store_true",
                        help="also queue every model at start (versions with a finished audit under the same settings are skipped)")
    worker.add_argument("--concurrency", type=positive_int,
                        help=f"jobs carried out at once (MEDROBUST_AUDIT_CONCURRENCY, default {_audit('concurrency')})")
    worker.add_argument("--lease-seconds", type=float,
                        help="a claimed job returns to the queue this long after its worker's last heartbeat "
                             f"(MEDROBUST_AUDIT_LEASE_SECONDS, default {_audit('lease_seconds'):g})")
    worker.add_argument("--max-attempts", type=positive_int,
                        help=f"tries of a job before it is failed (MEDROBUST_AUDIT_MAX_ATTEMPTS, default {_audit('max_attempts')})")
    worker.set_defaults(handler=_worker, check=config_from_args)

    sets = sub.add_parser("sets", help="each task's audit set, where it comes from, and the served models it covers")
    where = sets.add_mutually_exclusive_group()
    where.add_argument("--model-repo", type=Path, help="model repository (default: MEDROBUST_MODEL_REPO or model-repo)")
    where.add_argument("--tf-serving", metavar="HOST:PORT", help="TF Serving's gRPC address (default: MEDROBUST_TF_SERVING)")
    sets.add_argument("--served-models", nargs="+", metavar="M", help="the models TF Serving serves (default: MEDROBUST_MODELS)")
    sets.add_argument("--dataset", help="the audit set of every task the file does not name (default: MEDROBUST_AUDIT_DATASET)")
    sets.add_argument("--audit-sets", type=Path, metavar="FILE", help="TOML file of each task's audit set (default: MEDROBUST_AUDIT_SETS)")
    sets.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    sets.set_defaults(handler=_sets)

    enqueue = sub.add_parser("enqueue", help="queue audits for the workers (the same audit is never queued twice)")
    _common(enqueue)
    enqueue.add_argument("--json", action="store_true", help="print one JSON document")
    enqueue.set_defaults(handler=_enqueue)

    report = sub.add_parser("report", help="write the figures and HTML page of a stored run")
    report.add_argument("run_id", type=int, metavar="RUN_ID", help="the run's id, as `audit run` and the Audits page show it")
    report.add_argument("--database-url", help="SQLAlchemy URL of the audit store (default: MEDROBUST_DATABASE_URL)")
    report.add_argument("--artefacts-dir", type=Path,
                        help=f"where the run's examples are (default: MEDROBUST_AUDIT_ARTEFACTS or {_audit('artefacts_dir')})")
    report.add_argument("--out", type=Path, help="output folder (default: the run's artefacts folder /report)")
    report.set_defaults(handler=_report, check=config_from_args)


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    """The AuditConfig of a command: flags over `MEDROBUST_*` over defaults; a bad value is a UsageError."""
    from medrobust.commands import UsageError

    flags = dict(vars(args))
    flags["progress"] = False if flags.get("no_progress") else None
    try:
        return read_config(AuditConfig, flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _build(args, *, worker: bool = False):
    from medrobust.commands import StartupError, UsageError
    from medrobust.compose import build_audit_stack

    config = config_from_args(args)
    from audit.store import StoreUnavailable

    try:
        return build_audit_stack(config, worker=worker, metrics=worker)
    except StoreUnavailable as exc:
        raise StartupError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _interval(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if interval is None else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _table(result, run_id: int) -> str:
    lines = [
        f"run {run_id}: {result.model} v{result.version} ({result.backend}), {result.attack} "
        f"({result.steps} steps, seed {result.seed}; budget: {result.budget_label}), {len(result.audit_set)} images, "
        f"{result.seconds:.1f} s",
        f"  clean accuracy {_interval(result.clean_accuracy, result.clean_interval)} "
        f"(balanced {_interval(result.balanced_clean_accuracy, result.balanced_clean_interval)}), "
        f"robustness score {result.robustness_score:.3f} (mean over epsilon > 0)",
    ]
    if result.degenerate:
        lines.append(
            f"  DEGENERATE: {result.balanced_predicted_class_max_share:.0%} of the clean predictions are one class, "
            "each true class weighted equally; its robust accuracy is that class's share, not robustness"
        )
    if len(result.stages) > 1:
        lines.append("  stages, in turn on the images still standing: " + ", ".join(result.stages))
    if result.black_box_only:
        lines.append(
            f"  BLACK-BOX ONLY: the served gradient failed gradient_consistent, so {result.attack} was not run; "
            "the figures are a query-only attack's, an upper bound on robust accuracy"
        )
    if result.fooled_by:
        lines.append("  fooled by " + ", ".join(f"{name} {count}" for name, count in sorted(result.fooled_by.items())))
    lines.append("  figures with their 95% intervals: Wilson (robust, each class, worst class), stratified bootstrap (balanced)")
    lines.append(
        f"  {'epsilon':>9} {'robust [95%]':>21} {'balanced [95%]':>21} {'worst class [95%]':>21} {'attacked':>9} "
        f"{'fooled':>7} {'noise':>7}"
    )
    for p in result.points:
        noise = "" if p.noise_robust_accuracy is None else f"{p.noise_robust_accuracy:.3f}"
        worst = _interval(p.worst_class_robust_accuracy, p.worst_class_interval)
        lines.append(
            f"  {p.epsilon:>9} {_interval(p.robust_accuracy, p.robust_interval):>21} "
            f"{_interval(p.balanced_robust_accuracy, p.balanced_interval):>21} {worst:>21} {p.attacked:9d} {p.fooled:7d} {noise:>7}"
            + (f"  worst: {p.worst_class}" if p.worst_class else "")
        )
    for c in result.sanity:
        lines.append(f"  sanity {'ok    ' if c.passed else 'FAILED'} {c.name}: {c.detail}")
    return "\n".join(lines)


class _Terminal:
    """How far each run is, on the terminal: a tqdm bar on a TTY, else one line per stage (an
    epsilon of the attack, or of the noise reference)."""

    def __init__(self, config: AuditConfig, label: str):
        self.label = label
        attack = config.attack
        self.stages = len(attack.epsilons) * (2 if attack.noise_check and attack.attack != "uniform_noise" else 1)
        self.bar: Any = None  # a tqdm bar, made on the first step
        self.stage = -1

    def __call__(self, step) -> None:
        if sys.stderr.isatty():
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=step.total, desc=self.label, unit="img*eps", leave=False)
            self.bar.update(step.done - self.bar.n)
            return
        stage = step.done * self.stages // step.total if step.total else 0
        if stage > self.stage:
            self.stage = stage
            eta = "" if step.eta_seconds is None else f", about {step.eta_seconds:.0f} s left"
            print(f"run {step.run_id}: {self.label}: {step.done}/{step.total} images x epsilons ({step.done / step.total:.0%}){eta}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _stop_on_signals():
    """An event set by SIGINT or SIGTERM: the audit gives its job back at its next checkpoint."""
    import signal
    import threading

    stop = threading.Event()
    # Both signals get a handler, before anything starts: a process started in the background
    # (`cmd &`) inherits SIGINT ignored, so Ctrl-C or `kill -INT` must not rely on Python's
    # default KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait_for(store, run_id: int, stop):
    """A run another worker carries out, once it has ended (it may be given back and taken again)."""
    while (record := store.get_run(run_id)).status in ("queued", "running") and not stop.wait(2.0):
        pass
    return record


def _carry_out(stack, run_id: int, stop, show):
    """Carry out one queued run here until it ends: a job given back after a transient error is
    claimed again once its back-off has passed. Returns (status, audit or None)."""
    store, lease = stack.store, stack.config.lease_seconds
    job = store.claim(lease, run_ids=(run_id,))
    if job is None:  # the same audit is under way in a worker: its outcome is this command's
        print(f"run {run_id}: being audited by a worker; waiting for it", file=sys.stderr, flush=True)
        return _wait_for(store, run_id, stop).status, None
    while True:
        outcome = stack.runner.carry_out(job, stop=stop, show=show)
        if outcome.status != "queued" or stop.is_set():
            return outcome.status, outcome.audit
        print(f"run {run_id}: {outcome.error}; trying again", file=sys.stderr, flush=True)
        while (job := store.claim(lease, run_ids=(run_id,))) is None:
            if stop.wait(1.0) or store.get_run(run_id).status != "queued":
                return store.get_run(run_id).status, None


def _run(args: argparse.Namespace) -> int:
    from medrobust.commands import UsageError

    stack = _build(args)
    config, predictor, store = stack.config, stack.predictor, stack.store
    served = tuple(m.name for m in predictor.list_models())
    models = config.models or served
    unknown = sorted(set(models) - set(served))
    if unknown:
        raise UsageError(f"expected models among the served ones ({', '.join(served) or 'none'}), got {', '.join(unknown)}")
    if not models:
        raise UsageError("no models are served: nothing to audit")
    stop = _stop_on_signals()
    documents, failed = [], 0
    for queued in stack.enqueuer.enqueue_all("cli", models=tuple(models)):
        model, attack, run_id = queued.model, queued.attack, queued.run_id
        if stop.is_set():
            break
        if run_id is None:
            failed += 1
            # Not audited on another task's data: said, and counted as a failure.
            error = f"no audit set for the task of {model!r} (name one in the audit-sets file, or --dataset)"
            documents.append({"run_id": None, "model": model, "attack": attack, "status": "unauditable", "error": error})
            if not args.json:
                print(f"{model} {attack} NOT AUDITED: {error}", file=sys.stderr)
            continue
        terminal = _Terminal(config.with_(attack=config.attack_config(attack)), f"{model} v{queued.version} {attack}")
        status, audit = _carry_out(stack, run_id, stop, None if args.no_progress else terminal)
        terminal.close()
        if audit is None:
            failed += 1
            record = store.get_run(run_id)
            documents.append({"run_id": run_id, "model": model, "attack": attack, "status": record.status, "error": record.error})
            if not args.json:
                print(f"run {run_id}: {model} {attack} {record.status.upper()}: {record.error}", file=sys.stderr)
            continue
        documents.append({"status": status, **audit.result.to_json(run_id)})
        if not args.json:
            print(_table(audit.result, run_id))
    if args.json:
        print(json.dumps({"runs": documents}, default=list))
    stack.close()
    if stop.is_set():
        print("audit run: stopped; unfinished runs are back in the queue", file=sys.stderr)
        return 130
    return 1 if failed else 0


def _worker(args: argparse.Namespace) -> int:
    stack = _build(args, worker=True)
    stop = _stop_on_signals()
    worker = stack.worker
    worker.start(audit_now=args.now)
    config = stack.config
    print(f"audit worker: schedule {config.schedule!r}, {config.concurrency} job(s) at a time"
          f"{f', at most {config.max_rps:g} calls/s' if config.max_rps else ''}, lease {config.lease_seconds:g} s, "
          f"metrics on http://{config.metrics_host}:{worker.metrics_port}/metrics", flush=True)
    while not stop.wait(1.0):
        pass
    print("audit worker: stopping (running jobs go back to the queue)", flush=True)
    stack.close()
    return 0


def _enqueue(args: argparse.Namespace) -> int:
    from medrobust.commands import UsageError

    stack = _build(args)
    try:
        served = tuple(m.name for m in stack.predictor.list_models())
        unknown = sorted(set(stack.config.models) - set(served))
        if unknown:
            raise UsageError(f"expected models among the served ones ({', '.join(served) or 'none'}), got {', '.join(unknown)}")
        queued = stack.enqueuer.enqueue_all("cli", models=stack.config.models or served)
    finally:
        stack.close()
    if args.json:
        print(json.dumps({"jobs": [q.__dict__ for q in queued]}))
    for q in queued if not args.json else ():
        what = "queued" if q.created else f"already {q.status}" if q.run_id is not None else "not queued: no audit set"
        print(f"run {q.run_id}: {q.model} v{q.version} {q.attack}: {what}")
    return 0


def _sets(args: argparse.Namespace) -> int:
    from audit.audit_sets import AuditSetsError, load_audit_sets
    from medrobust.commands import UsageError
    from medrobust.compose import build_audit_predictor

    config = config_from_args(args)
    try:
        audit_sets = load_audit_sets(config.audit_sets, config.dataset)
        predictor = build_audit_predictor(config)
    except (AuditSetsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    try:
        coverage = audit_sets.coverage((info.name, info.card) for info in predictor.list_models())
    finally:
        predictor.close()
    rows: dict[tuple[str, str | None, str | None], list[str]] = {}
    for c in coverage:
        rows.setdefault((c.task, c.dataset, c.origin), []).append(c.model)
    for task, spec in audit_sets.tasks.items():  # named in the file but serving no model now
        if not any(key[0] == task for key in rows):
            rows[(task, spec, "file")] = []
    if args.json:
        print(json.dumps({
            "file": audit_sets.source, "default": audit_sets.default,
            "tasks": [{"task": t, "dataset": d, "origin": o, "models": m} for (t, d, o), m in sorted(rows.items(), key=str)],
            "unauditable": [c.to_json() for c in coverage if c.dataset is None],
        }))
        return 0
    print(f"audit sets: file {audit_sets.source or 'none'}, default {audit_sets.default or 'none'} "
          "(then each model's training data where it can be read here)")
    print(f"  {'task':<16} {'audit set':<40} {'from':<10} served models")
    for (task, dataset, origin), models in sorted(rows.items(), key=str):
        print(f"  {task:<16} {dataset or 'NONE: not audited':<40} {origin or '':<10} {', '.join(models) or '(none served)'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from audit.report import write_report
    from audit.store import AuditStore, RunNotFound
    from medrobust.commands import UsageError

    config = config_from_args(args)
    store = AuditStore(config.database_url, migrate=False)
    try:
        page = write_report(store, args.run_id, artefacts_root=config.artefacts_dir, out_dir=args.out)
    except (RunNotFound, ValueError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    print(page)
    return 0

