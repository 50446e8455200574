"""`medrobust up`: the whole system on one machine, from an empty model repository to a running service.

Trains a quick ResNet-50 baseline and attention pair when the repository is empty (on the dataset
given, or on the synthetic stand-in when none is), then runs in this process: the front end (with
the Audits page), the audit scheduler (first audit at once) and the metrics. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import threading
import time
from pathlib import Path

from training.contract.config import AuditConfig, ServiceConfig, TrainConfig, default_of

log = logging.getLogger(__name__)
QUICK_DATASET = "synthetic:600"


def register(subparsers) -> None:
    up = subparsers.add_parser("up", help="train a quick model pair if none exists, then serve, audit and export metrics")
    up.add_argument("--model-repo", type=Path, help=f"default: MEDROBUST_MODEL_REPO or {default_of(TrainConfig, 'model_repo')}")
    up.add_argument("--dataset", help=f"KIND:PATH to train on and audit with (default: the models' own, or {QUICK_DATASET} offline)")
    up.add_argument("--task", help="task name for the quick models (default: the dataset's)")
    up.add_argument("--image-size", type=int, default=32, help="input size of the quick models (default 32)")
    up.add_argument("--train-images", type=int, default=300, help="training images for the quick models (default 300)")
    up.add_argument("--epochs", type=int, default=3, help="epochs for the quick models (default 3)")
    up.add_argument("--host", help=f"bind address (default: MEDROBUST_HOST or {default_of(ServiceConfig, 'host')})")
    up.add_argument("--port", type=int, help=f"front end port (default: MEDROBUST_PORT or {default_of(ServiceConfig, 'port')})")
    up.add_argument(
        "--allow-anonymous", action="store_true", default=None,
        help="serve the API without MEDROBUST_API_TOKEN on a non-loopback --host, on purpose (MEDROBUST_ALLOW_ANONYMOUS=1)",
    )
    up.add_argument("--metrics-port", type=int, help=f"the audit worker's /metrics (default: MEDROBUST_AUDIT_METRICS_PORT or {default_of(AuditConfig, 'metrics_port')})")
    up.add_argument("--samples", type=int, help=f"audit set size (default: MEDROBUST_AUDIT_SAMPLES or {default_of(AuditConfig, 'samples')})")
    up.add_argument("--steps", type=int, help="attack steps (default: MEDROBUST_AUDIT_STEPS or the attack's own)")
    up.add_argument("--database-url", help=f"audit store (default: MEDROBUST_DATABASE_URL or {default_of(AuditConfig, 'database_url')})")
    up.add_argument("--no-audit", action="store_true", help="do not audit at start (the schedule still runs)")
    up.set_defaults(handler=_up)


def _banner(text: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n{text}\n{line}\n", flush=True)


def train_quick_pair(repo: Path, dataset, *, task: str, image_size: int, train_images: int, epochs: int) -> None:
    """A ResNet-50 baseline and attention model, briefly trained: a working demo, not a result."""
    from training.recipe import Recipe
    from training.workflow import Variant, train_and_export

    recipe = Recipe(epochs=epochs, learning_rate=0.001, batch_size=32, seed=0)
    for attention in (False, True):
        train_and_export(
            dataset, Variant("resnet50", attention), task=task, image_size=image_size, model_repo=repo,
            recipe=recipe, limit=train_images, verbose=2,
        )


def _up(args: argparse.Namespace) -> int:
    from medrobust.commands import UsageError, read_service_config
    from training.contract.config import read_config

    started = time.perf_counter()
    try:
        repo = read_config(TrainConfig, {"model_repo": args.model_repo}).model_repo
        dataset_flag = read_config(AuditConfig, {"dataset": args.dataset}).dataset
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # Before any training (and TensorFlow's import): a refused --host should not cost minutes.
    service_config = read_service_config(
        {"model_repo": repo, "host": args.host, "port": args.port, "allow_anonymous": args.allow_anonymous}
    )
    from training.contract.repository import list_models
    from training.models import spec_for

    if args.image_size < spec_for("resnet50").min_size:
        raise UsageError(f"resnet50 needs --image-size >= {spec_for('resnet50').min_size}, got {args.image_size}")
    existing = list_models(repo)
    dataset_spec = dataset_flag
    dataset = None
    if not existing:
        from training.dataset_types import DatasetError
        from training.datasets import load_dataset

        dataset_spec = dataset_spec or QUICK_DATASET
        try:
            dataset = load_dataset(dataset_spec, seed=0)
        except DatasetError as exc:
            raise UsageError(str(exc)) from None
        if dataset.synthetic:
            _banner(
                f"NO DATASET GIVEN: training on {dataset_spec}, SYNTHETIC shapes, NOT MEDICAL IMAGES.\n"
                "The models, predictions and audits below are a demonstration of the system only.\n"
                "Pass --dataset KIND:PATH (e.g. ham10000:DIR, medmnist:FILE.npz) for real models."
            )
        print(f"{repo} is empty: training a quick ResNet-50 baseline and attention pair "
              f"({args.image_size}x{args.image_size}, {args.train_images} images, {args.epochs} epochs)", flush=True)
        train_quick_pair(
            repo, dataset, task=args.task or dataset.default_task, image_size=args.image_size,
            train_images=args.train_images, epochs=args.epochs,
        )
        existing = list_models(repo)
    if dataset_spec is None:
        dataset_spec = (existing[0].card.get("dataset") or {}).get("source")
        if not dataset_spec:
            raise UsageError("expected --dataset to audit with: the models' cards do not name their dataset")
    if any((m.card.get("dataset") or {}).get("synthetic") for m in existing):
        _banner("These models were trained on SYNTHETIC data: a demonstration, not medical classifiers.")
    return _serve(args, service_config, dataset_spec, dataset, started)


def _serve(args, service_config: ServiceConfig, dataset_spec: str, dataset, started: float) -> int:
    from dataclasses import replace

    from prometheus_client import CollectorRegistry
    from werkzeug.serving import make_server

    from medrobust.commands import UsageError
    from medrobust.compose import build_app, build_audit_stack, build_predictor
    from training.contract.config import read_config

    repo = service_config.model_repo
    try:
        # Always the embedded backend over `repo`: `up` is the one-machine system.
        service_config = replace(service_config, tf_serving=None)
        audit_config = replace(read_config(AuditConfig, {
            "model_repo": repo, "dataset": dataset_spec, "samples": args.samples, "steps": args.steps,
            "database_url": args.database_url, "metrics_port": args.metrics_port, "metrics_host": service_config.host,
        }), tf_serving=None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    admin_token = service_config.admin_token
    generated = admin_token is None
    if generated:
        admin_token = secrets.token_urlsafe(18)
        service_config = replace(service_config, admin_token=admin_token)
    predictor = build_predictor(service_config)
    preloaded = {dataset_spec: dataset} if dataset is not None else {}

    def load(spec):
        if spec in preloaded:
            return preloaded[spec]
        from training.datasets import load_dataset

        return load_dataset(spec, seed=audit_config.seed)

    # One registry: the front end's /metrics and the worker's port both show the audit's figures.
    registry = CollectorRegistry()
    stack = build_audit_stack(audit_config, predictor=predictor, registry=registry, worker=True, load_dataset=load)
    worker = stack.worker
    app = build_app(service_config, predictor=predictor, registry=registry, audits=stack.reader())
    host, port = service_config.host, service_config.port
    server = make_server(host, port, app, threaded=True)
    web = threading.Thread(target=server.serve_forever, name="frontend", daemon=True)
    web.start()
    worker.start(audit_now=not args.no_audit)
    base = f"http://{host}:{server.server_port}"
    seconds = time.perf_counter() - started
    print(
        f"\nmedrobust is up ({seconds:.0f} s):\n"
        f"  front end      {base}/\n"
        f"  audits         {base}/audits   (API: {base}/api/v1/audits)\n"
        f"  metrics        {base}/metrics  and  http://{host}:{worker.metrics_port}/metrics (audit worker)\n"
        f"  health         {base}/healthz  and  http://{host}:{worker.metrics_port}/healthz\n"
        f"  audit schedule {audit_config.schedule!r} (MEDROBUST_AUDIT_SCHEDULE), first audit "
        f"{'running now' if not args.no_audit else 'skipped'}; store {audit_config.database_url}\n"
        + (f"  admin token    {admin_token}   (generated; set MEDROBUST_ADMIN_TOKEN to choose one)\n" if generated else "")
        + "Ctrl-C stops everything.",
        flush=True,
    )
    stop = threading.Event()
    # Handlers for both: a process started in the background inherits SIGINT ignored, so Ctrl-C
    # (or `kill -INT`) must not depend on Python's default KeyboardInterrupt.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopping: front end, audit scheduler, metrics", flush=True)
        server.shutdown()
        stack.close()
    return 0
