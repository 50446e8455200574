"""`medrobust serve`: the front end under gunicorn. Imports nothing heavy until the command runs."""

from __future__ import annotations

import argparse

from training.contract.config import DEFAULT_MODEL_REPO, ServiceConfig, default_of


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve the models and the web front end (gunicorn)",
        description=(
            "Serve the model repository over HTTP with the Grad-CAM front end. Embedded backend "
            "(models loaded in-process) unless --tf-serving names a TF Serving gRPC address. Every flag "
            "falls back to its MEDROBUST_* variable; the tokens are read only from MEDROBUST_API_TOKEN and "
            "MEDROBUST_ADMIN_TOKEN (flags would show in the process list). On an address beyond loopback "
            "(--host 0.0.0.0) it refuses to start without MEDROBUST_API_TOKEN unless --allow-anonymous."
        ),
    )
    d = lambda name: default_of(ServiceConfig, name)  # noqa: E731  (defaults are written once, on the config)
    p.add_argument("--model-repo", metavar="DIR",
                   help=f"model repository (MEDROBUST_MODEL_REPO, default {DEFAULT_MODEL_REPO} unless --tf-serving is given)")
    p.add_argument("--tf-serving", metavar="HOST:PORT",
                   help="TF Serving gRPC address, HOST:PORT or dns:///HOST:PORT to balance over every address the name has "
                        "(MEDROBUST_TF_SERVING)")
    p.add_argument("--models", metavar="A,B", help="served model names, when TF Serving runs without a visible repository (MEDROBUST_MODELS)")
    p.add_argument("--host", help=f"bind address (MEDROBUST_HOST, default {d('host')})")
    p.add_argument("--port", type=int, help=f"port (MEDROBUST_PORT, default {d('port')})")
    p.add_argument("--metrics-port", type=int,
                   help=f"port of /metrics, apart from the API (MEDROBUST_METRICS_PORT, default {d('metrics_port')})")
    p.add_argument("--metrics-host", help="bind address of /metrics (MEDROBUST_METRICS_HOST, default: --host)")
    p.add_argument(
        "--allow-anonymous", action="store_true", default=None,
        help="serve the API without MEDROBUST_API_TOKEN on a non-loopback --host, on purpose (MEDROBUST_ALLOW_ANONYMOUS=1)",
    )
    p.add_argument("--workers", type=int, help=f"gunicorn worker processes (MEDROBUST_WORKERS, default {d('workers')})")
    p.add_argument("--threads", type=int, help=f"threads per worker (MEDROBUST_THREADS, default {d('threads')})")
    p.add_argument("--max-loaded", type=int,
                   help=f"embedded: most model versions held in memory per worker (MEDROBUST_MAX_LOADED, default {d('max_loaded')})")
    p.add_argument("--poll-seconds", type=float,
                   help=f"embedded: how often to look for new versions (MEDROBUST_POLL_SECONDS, default {d('poll_seconds'):g})")
    p.add_argument("--tf-serving-max-batch", type=int,
                   help="TF Serving's max_batch_size: larger batches are split "
                        f"(MEDROBUST_TF_SERVING_MAX_BATCH, default {d('tf_serving_max_batch')})")
    p.add_argument("--grpc-deadline-seconds", type=float,
                   help=f"TF Serving: deadline of each call (MEDROBUST_GRPC_DEADLINE_SECONDS, default {d('grpc_deadline_seconds'):g})")
    p.add_argument("--max-upload-bytes", type=int, help=f"largest request body (MEDROBUST_MAX_UPLOAD_BYTES, default {d('max_upload_bytes')})")
    p.add_argument("--max-pixels", type=int, help=f"largest decoded image (MEDROBUST_MAX_PIXELS, default {d('max_pixels')})")
    p.add_argument("--max-decodes", type=int,
                   help=f"uploads decoded at once per worker; more wait, then get 503 (MEDROBUST_MAX_DECODES, default {d('max_decodes')})")
    p.add_argument(
        "--database-url", metavar="URL",
        help="audit store whose runs the Audits page shows, as written by `medrobust audit worker` (MEDROBUST_DATABASE_URL; "
             "default: no Audits page)",
    )
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from medrobust.commands import read_service_config, require_model_repo
    from medrobust.ports import check_free, front_end_listens

    config = read_service_config(vars(args))
    if config.model_repo is not None:
        require_model_repo(config.model_repo)
    check_free(*front_end_listens(config))
    if config.database_url:
        _wait_for_the_audit_database(config)
    from medrobust.web_server import serve

    return serve(config)


def _wait_for_the_audit_database(config) -> None:
    """Wait for the Audits pages' database, and for a writer to bring its schema to the one this
    front end reads, here, before gunicorn starts: a server that never comes up, or a schema nobody
    upgrades, is then one line and exit 1, not a traceback in every worker's boot."""
    from audit.migrate import SchemaOutdated, wait_for_schema
    from audit.store import StoreUnavailable, make_engine, wait_for_database
    from medrobust.commands import StartupError

    engine = make_engine(config.database_url)
    try:
        wait_for_database(engine, config.database_wait_seconds)
        wait_for_schema(engine, config.database_wait_seconds)
    except (StoreUnavailable, SchemaOutdated) as exc:
        raise StartupError(str(exc)) from None
    finally:
        engine.dispose()
