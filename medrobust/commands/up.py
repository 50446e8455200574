"""`medrobust up`: the whole system on one machine, from an empty model repository to a running service.

Trains a quick ResNet-50 baseline and attention pair when the repository is empty (on the dataset
given, or on the synthetic stand-in when none is; in a child process), then runs gunicorn with one
worker holding the front end (with the Audits page), the audit scheduler (first audit at once) and
the metrics. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from medrobust.commands import positive_int
from training.contract.card import MIN_INPUT_SIZE, Backbone
from training.contract.config import DEFAULT_MODEL_REPO, AuditConfig, ServiceConfig, default_of, env_name

if TYPE_CHECKING:
    from medrobust.admin_token import KeptToken

log = logging.getLogger(__name__)
QUICK_DATASET = "synthetic:600"
# The quick pair's recipe: both models learn the synthetic set (balanced test accuracy 0.86-0.94
# over two runs; tests/integration/test_demo_pair.py, which also plays the pointing game) in about
# 350 CPU seconds with their exports. 64 px gives Grad-CAM an 8x8 grid (32 px: 4x4).
QUICK_IMAGE_SIZE = 64
QUICK_TRAIN_IMAGES = 420  # all of synthetic:600's training split
QUICK_EPOCHS = 6


def register(subparsers) -> None:
    up = subparsers.add_parser("up", help="train a quick model pair if none exists, then serve, audit and export metrics")
    up.add_argument("--model-repo", type=Path, help=f"model repository (default: MEDROBUST_MODEL_REPO or {DEFAULT_MODEL_REPO})")
    up.add_argument("--dataset", help=f"KIND:PATH to train on and audit with (default: the models' own, or {QUICK_DATASET} offline)")
    up.add_argument("--task", help="task name for the quick models (default: the dataset's)")
    up.add_argument("--image-size", type=positive_int, default=QUICK_IMAGE_SIZE,
                    help=f"input size of the quick models (default {QUICK_IMAGE_SIZE})")
    up.add_argument("--train-images", type=positive_int, default=QUICK_TRAIN_IMAGES,
                    help=f"training images for the quick models (default {QUICK_TRAIN_IMAGES})")
    up.add_argument("--epochs", type=positive_int, default=QUICK_EPOCHS, help=f"epochs for the quick models (default {QUICK_EPOCHS})")
    up.add_argument("--host", help=f"bind address (default: MEDROBUST_HOST or {default_of(ServiceConfig, 'host')})")
    up.add_argument("--port", type=int, help=f"front end port (default: MEDROBUST_PORT or {default_of(ServiceConfig, 'port')})")
    up.add_argument(
        "--allow-anonymous", action="store_true", default=None,
        help="serve the API without MEDROBUST_API_TOKEN on a non-loopback --host, on purpose (MEDROBUST_ALLOW_ANONYMOUS=1)",
    )
    up.add_argument("--metrics-port", type=int,
                    help=f"/metrics of the front end and the audit, apart from the API, as `serve`'s "
                         f"(default: MEDROBUST_METRICS_PORT or {default_of(ServiceConfig, 'metrics_port')})")
    up.add_argument("--samples", type=positive_int, help=f"audit set size (default: MEDROBUST_AUDIT_SAMPLES or {default_of(AuditConfig, 'samples')})")
    up.add_argument("--steps", type=positive_int, help="attack steps (default: MEDROBUST_AUDIT_STEPS or the attack's own)")
    up.add_argument("--database-url", help=f"audit store (default: MEDROBUST_DATABASE_URL or {default_of(AuditConfig, 'database_url')})")
    up.add_argument("--no-audit", action="store_true",
                    help="do not audit the models there are at start (the schedule, and versions added later, still are)")
    up.set_defaults(handler=_up)


def _banner(text: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n{text}\n{line}\n", flush=True)


def quick_recipe(epochs: int = QUICK_EPOCHS):
    """The paper's optimiser (Adam, learning rate 0.01, epsilon 0.1) for a few dozen steps: batch-norm
    statistics that keep up (momentum 0.9), no early stopping within so few epochs."""
    from training.recipe import Recipe

    return Recipe(epochs=epochs, learning_rate=0.01, batch_size=32, patience=epochs, seed=0, batchnorm_momentum=0.9)


def train_quick_pair(repo: Path, dataset, *, task: str, image_size: int, train_images: int, epochs: int) -> None:
    """A ResNet-50 baseline and attention model, briefly trained: a working demo, not a result."""
    from training.workflow import Variant, train_and_export

    recipe = quick_recipe(epochs)
    for i, attention in enumerate((False, True), 1):
        train_and_export(
            dataset, Variant("resnet50", attention), task=task, image_size=image_size, model_repo=repo,
            recipe=recipe, limit=train_images, position=(i, 2),
        )


def _up(args: argparse.Namespace) -> int:
    from medrobust.commands import UsageError, read_service_config
    from medrobust.ports import check_free, front_end_listens
    from training.contract.config import TrainConfig, read_config

    started = time.perf_counter()
    try:
        train_config = read_config(TrainConfig, {"model_repo": args.model_repo})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    repo = train_config.model_repo
    # Before any training: a refused --host, a too small --image-size or a busy port should not cost minutes.
    service_config = read_service_config({
        "model_repo": repo, "host": args.host, "port": args.port, "metrics_port": args.metrics_port,
        "allow_anonymous": args.allow_anonymous,
    })
    audit_config = audit_config_for_up(args, service_config)
    minimum = MIN_INPUT_SIZE[Backbone.RESNET50]
    if args.image_size < minimum:
        raise UsageError(f"resnet50 needs --image-size >= {minimum}, got {args.image_size}")
    if audit_config.dataset:
        from training.dataset_types import DatasetError
        from training.datasets import check_spec

        try:
            check_spec(audit_config.dataset)
        except DatasetError as exc:
            raise UsageError(str(exc)) from None
    check_free(*front_end_listens(service_config))
    from training.contract.repository import list_models

    # This process becomes gunicorn's master, which forks the front end's worker: TensorFlow must
    # never be imported here. Training runs in a child process of its own.
    existing = list_models(repo)
    dataset_spec = audit_config.dataset  # --dataset or MEDROBUST_AUDIT_DATASET
    if not existing:
        dataset_spec = dataset_spec or QUICK_DATASET
        status = _in_child(train_for_up, repo=repo, dataset_spec=dataset_spec, task=args.task,
                           image_size=args.image_size, train_images=args.train_images, epochs=args.epochs,
                           verbose=args.verbose)
        if status != 0:
            return status
        existing = list_models(repo)
    if dataset_spec is None:
        dataset_spec = (existing[0].card.get("dataset") or {}).get("source")
        if not dataset_spec:
            raise UsageError("expected --dataset to audit with: the models' cards do not name their dataset")
    if any((m.card.get("dataset") or {}).get("synthetic") for m in existing):
        _banner("These models were trained on SYNTHETIC data: a demonstration, not medical classifiers.")
    return _serve(args, service_config, replace(audit_config, dataset=dataset_spec), started, train_config.workdir)


def audit_config_for_up(args: argparse.Namespace, service_config: ServiceConfig) -> AuditConfig:
    """The audit's config in `up`: the embedded backend over the front end's repository, and its
    metrics on the front end's metrics port (one server in the worker serves both)."""
    from medrobust.commands import UsageError
    from training.contract.config import read_config

    try:
        return replace(read_config(AuditConfig, {
            "model_repo": service_config.model_repo, "dataset": args.dataset, "samples": args.samples,
            "steps": args.steps, "database_url": args.database_url,
            "metrics_port": service_config.metrics_port, "metrics_host": service_config.metrics_host or service_config.host,
        }), tf_serving=None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _in_child(target, **kwargs) -> int:
    """Run `target(**kwargs)` in a fresh interpreter (spawned, not forked) and return its exit code."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=target, kwargs=kwargs, name="medrobust-train")
    child.start()
    try:
        child.join()
    except KeyboardInterrupt:  # Ctrl-C reached the child too; wait for it to stop
        child.join(30)
        if child.is_alive():
            child.terminate()
        return 130
    return child.exitcode if child.exitcode is not None else 1


def train_for_up(*, repo: Path, dataset_spec: str, task: str | None, image_size: int, train_images: int, epochs: int,
                 verbose: bool) -> None:
    """The quick pair, in the spawned child: exits 2 with the message on a usage error."""
    import sys

    from medrobust.cli import import_tensorflow_quietly, quiet_tensorflow
    from medrobust.commands import UsageError

    if not verbose:
        quiet_tensorflow()
        import_tensorflow_quietly()
    try:
        from training.dataset_types import DatasetError
        from training.datasets import load_dataset

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
              f"({image_size}x{image_size}, {train_images} images, {epochs} epochs)", flush=True)
        train_quick_pair(repo, dataset, task=task or dataset.default_task, image_size=image_size,
                         train_images=train_images, epochs=epochs)
    except UsageError as exc:
        print(f"medrobust up: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _serve(args, service_config: ServiceConfig, audit_config: AuditConfig, started: float, state_dir: Path) -> int:
    """gunicorn with one worker, which holds the front end and the audit scheduler over one
    embedded backend (one copy of each model in memory); its registry is served on the metrics port.
    An admin token `up` makes is kept in `state_dir` and reused on the next start."""
    from medrobust.admin_token import keep_admin_token
    from medrobust.web_server import run_gunicorn

    admin = keep_admin_token(service_config.admin_token, state_dir)
    # Always the embedded backend over the repository: `up` is the one-machine system.
    service_config = replace(service_config, tf_serving=None, admin_token=admin.token)
    held = {}

    def load():
        """In the worker, after the fork: TensorFlow, the models, the audit stack and the app."""
        from prometheus_client import CollectorRegistry

        from medrobust.cli import import_tensorflow_quietly
        from medrobust.compose import build_app, build_audit_stack, build_service_predictor

        if not args.verbose:
            import_tensorflow_quietly()
        predictor = build_service_predictor(service_config)
        # One registry, served on the worker's metrics port: the front end's counts and the audit's
        # figures together, and nothing of them on the API's port.
        registry = CollectorRegistry()
        stack = held["stack"] = build_audit_stack(audit_config, predictor=predictor, registry=registry, worker=True)
        app = build_app(service_config, predictor=predictor, registry=registry, audits=stack.reader())
        if args.no_audit:
            stack.worker.skip_served_versions()  # else the new-version poll would audit them at once
        stack.worker.start(audit_now=not args.no_audit)
        _print_urls(service_config, audit_config, stack.worker.metrics_port, admin,
                    time.perf_counter() - started, audit_now=not args.no_audit)
        return app

    def worker_exit(arbiter, worker) -> None:
        print("stopping: front end, audit scheduler, metrics", flush=True)
        if "stack" in held:
            held.pop("stack").close()

    return run_gunicorn(service_config, load, workers=1, hooks={"worker_exit": worker_exit}, quiet=not args.verbose)


def _print_urls(service: ServiceConfig, audit: AuditConfig, metrics_port: int, admin: KeptToken,
                seconds: float, *, audit_now: bool) -> None:
    host = service.host
    base = f"http://{host}:{service.port}"
    print(
        f"\nmedrobust is up ({seconds:.0f} s):\n"
        f"  front end      {base}/\n"
        f"  audits         {base}/audits   (API: {base}/api/v1/audits)\n"
        f"  metrics        http://{host}:{metrics_port}/metrics  (front end and audit)\n"
        f"  health         {base}/healthz  and  http://{host}:{metrics_port}/healthz\n"
        f"  audit schedule {audit.schedule!r} (MEDROBUST_AUDIT_SCHEDULE), first audit "
        f"{'queued now (versions audited before under the same settings are skipped)' if audit_now else 'skipped'}; "
        f"store {audit.database_url}\n"
        + (f"  admin token    {admin.token}   (kept in {admin.path}; set {env_name(ServiceConfig, 'admin_token')} "
           "to choose one)\n" if admin.path is not None else "")
        + "Ctrl-C stops everything.",
        flush=True,
    )
