"""`medrobust serve`: the front end under gunicorn. Imports nothing heavy until the command runs."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve the models and the web front end (gunicorn)",
        description=(
            "Serve the model repository over HTTP with the Grad-CAM front end. Embedded backend "
            "(models loaded in-process) unless --tf-serving names a TF Serving gRPC address. Every flag "
            "falls back to its MEDROBUST_* variable; the tokens are read only from MEDROBUST_API_TOKEN and "
            "MEDROBUST_ADMIN_TOKEN (flags would show in the process list)."
        ),
    )
    p.add_argument("--model-repo", metavar="DIR", help="model repository (MEDROBUST_MODEL_REPO)")
    p.add_argument("--tf-serving", metavar="HOST:PORT", help="TF Serving gRPC address (MEDROBUST_TF_SERVING)")
    p.add_argument("--models", metavar="A,B", help="served model names, when TF Serving runs without a visible repository (MEDROBUST_MODELS)")
    p.add_argument("--host", help="bind address (MEDROBUST_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (MEDROBUST_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="gunicorn worker processes (MEDROBUST_WORKERS, default 1)")
    p.add_argument("--threads", type=int, help="threads per worker (MEDROBUST_THREADS, default 4)")
    p.add_argument("--max-loaded", type=int, help="embedded: most model versions held in memory per worker (MEDROBUST_MAX_LOADED, default 8)")
    p.add_argument("--poll-seconds", type=float, help="embedded: how often to look for new versions (MEDROBUST_POLL_SECONDS, default 30)")
    p.add_argument("--grpc-deadline-seconds", type=float, help="TF Serving: deadline of each call (MEDROBUST_GRPC_DEADLINE_SECONDS, default 10)")
    p.add_argument("--max-upload-bytes", type=int, help="largest request body (MEDROBUST_MAX_UPLOAD_BYTES, default 20000000)")
    p.add_argument("--max-pixels", type=int, help="largest decoded image (MEDROBUST_MAX_PIXELS, default 50000000)")
    p.add_argument(
        "--database-url", metavar="URL",
        help="audit store whose runs the Audits page shows, as written by `medrobust audit worker` (MEDROBUST_DATABASE_URL; "
             "default: no Audits page)",
    )
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from medrobust.cli import UsageError
    from service.config import ServiceConfig

    flags = {
        "model_repo": args.model_repo,
        "tf_serving": args.tf_serving,
        "models": tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "threads": args.threads,
        "max_loaded": args.max_loaded,
        "poll_seconds": args.poll_seconds,
        "grpc_deadline_seconds": args.grpc_deadline_seconds,
        "max_upload_bytes": args.max_upload_bytes,
        "max_pixels": args.max_pixels,
        "database_url": args.database_url,
    }
    try:
        config = ServiceConfig.from_env(os.environ, **flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.model_repo is not None and not config.model_repo.is_dir():
        raise UsageError(f"--model-repo: expected a directory, got {str(config.model_repo)!r}")
    from service.server import serve

    return serve(config)
