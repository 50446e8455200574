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

from medrobust.env import env_int, env_str

log = logging.getLogger(__name__)
QUICK_DATASET = "synthetic:600"


def register(subparsers) -> None:
    up = subparsers.add_parser("up", help="train a quick model pair if none exists, then serve, audit and export metrics")
    up.add_argument("--model-repo", type=Path, default=Path(env_str("MODEL_REPO", "model-repo")), help="default: MEDROBUST_MODEL_REPO or model-repo")
    up.add_argument("--dataset", default=env_str("AUDIT_DATASET"), help=f"KIND:PATH to train on and audit with (default: the models' own, or {QUICK_DATASET} offline)")
    up.add_argument("--task", help="task name for the quick models (default: the dataset's)")
    up.add_argument("--image-size", type=int, default=32, help="input size of the quick models (default 32)")
    up.add_argument("--train-images", type=int, default=300, help="training images for the quick models (default 300)")
    up.add_argument("--epochs", type=int, default=3, help="epochs for the quick models (default 3)")
    up.add_argument("--host", default=env_str("HOST", "127.0.0.1"))
    up.add_argument("--port", type=int, default=env_int("PORT", 8000))
    up.add_argument("--metrics-port", type=int, default=env_int("AUDIT_METRICS_PORT", 9101), help="the audit worker's /metrics (default 9101)")
    up.add_argument("--samples", type=int, help="audit set size (default: MEDROBUST_AUDIT_SAMPLES or 256)")
    up.add_argument("--steps", type=int, help="attack steps (default: MEDROBUST_AUDIT_STEPS or 20)")
    up.add_argument("--database-url", help="audit store (default: MEDROBUST_DATABASE_URL or sqlite:///.medrobust/audits.sqlite)")
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
    from medrobust.cli import UsageError
    from training.models import spec_for
    from training.repository import list_models

    started = time.perf_counter()
    if args.image_size < spec_for("resnet50").min_size:
        raise UsageError(f"resnet50 needs --image-size >= {spec_for('resnet50').min_size}, got {args.image_size}")
    repo = args.model_repo
    existing = list_models(repo)
    dataset_spec = args.dataset
    dataset = None
    if not existing:
        from training.datasets import DatasetError, load_dataset

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
    return _serve(args, repo, dataset_spec, dataset, started)


def _serve(args, repo: Path, dataset_spec: str, dataset, started: float) -> int:
    from prometheus_client import CollectorRegistry
    from werkzeug.serving import make_server

    from audit.config import config_from_env
    from audit.metrics import AuditMetrics
    from audit.runner import AuditRunner
    from audit.scheduler import AuditWorker
    from audit.store import AuditStore
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.backends import make_predictor
    from service.config import ServiceConfig

    admin_token = env_str("ADMIN_TOKEN")
    generated = admin_token is None
    if generated:
        admin_token = secrets.token_urlsafe(18)
    service_config = ServiceConfig.from_env(model_repo=repo, tf_serving=None, host=args.host, port=args.port, admin_token=admin_token)
    audit_config = config_from_env(
        model_repo=repo, dataset=dataset_spec, samples=args.samples, steps=args.steps, database_url=args.database_url,
        metrics_port=args.metrics_port, metrics_host=args.host,
    )
    predictor = make_predictor(service_config)
    store = AuditStore(audit_config.database_url)
    # One registry: the front end's /metrics and the worker's port both show the audit's figures.
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    metrics.restore(store)
    preloaded = {dataset_spec: dataset} if dataset is not None else {}

    def load(spec):
        if spec in preloaded:
            return preloaded[spec]
        from training.datasets import load_dataset

        return load_dataset(spec, seed=audit_config.seed)

    runner = AuditRunner(audit_config, predictor, store, metrics, load_dataset=load)
    worker = AuditWorker(audit_config, runner, registry)
    app = create_app(
        service_config, predictor=predictor, registry=registry,
        extensions=[audits_extension(store, runner, artefacts_dir=audit_config.artefacts_dir)],
    )
    server = make_server(args.host, args.port, app, threaded=True)
    web = threading.Thread(target=server.serve_forever, name="frontend", daemon=True)
    web.start()
    worker.start(audit_now=not args.no_audit)
    base = f"http://{args.host}:{server.server_port}"
    seconds = time.perf_counter() - started
    print(
        f"\nmedrobust is up ({seconds:.0f} s):\n"
        f"  front end      {base}/\n"
        f"  audits         {base}/audits   (API: {base}/api/v1/audits)\n"
        f"  metrics        {base}/metrics  and  http://{args.host}:{worker.metrics_port}/metrics (audit worker)\n"
        f"  health         {base}/healthz  and  http://{args.host}:{worker.metrics_port}/healthz\n"
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
        worker.stop()
        predictor.close()
        store.close()
    return 0
