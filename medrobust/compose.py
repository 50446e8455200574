"""The composition root: the only code that builds predictors, stores, runners, workers, metrics and
the app from a configuration. `up`, the commands, gunicorn's entry and `reproduce` call it.

Everything below the command package takes its collaborators as arguments; this module decides
which ones. Imports are inside the functions: building nothing at import time keeps `--help` instant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.contract.config import AuditConfig, ServiceConfig, default_of

log = logging.getLogger(__name__)


def build_predictor(
    config: ServiceConfig | AuditConfig,
    *,
    served_models: tuple[str, ...] = (),
    max_loaded: int = default_of(ServiceConfig, "max_loaded"),
    poll_seconds: float = default_of(ServiceConfig, "poll_seconds"),
    start_polling: bool = True,
):
    """The backend `config` names: TF Serving at `config.tf_serving`, else the embedded one over
    `config.model_repo` (which polls for new versions in the background when `start_polling`).

    From `config` only where to reach models (both configs' fields of the same name and meaning);
    the rest is explicit: `served_models` names what TF Serving serves when no repository says so,
    `max_loaded` and `poll_seconds` tune the embedded backend. (An audit's `models` are the models
    to audit, not the served ones: read off either config they made the served-model check moot.)
    """
    if config.tf_serving:
        from service.tfserving import TFServingPredictor

        return TFServingPredictor(
            config.tf_serving,
            deadline_seconds=config.grpc_deadline_seconds,
            model_repo=config.model_repo,
            models=served_models,
            max_batch_size=config.tf_serving_max_batch,
        )
    from service.embedded import EmbeddedPredictor

    if config.model_repo is None:
        raise ValueError("expected a model repository or a TF Serving address, got neither")
    predictor = EmbeddedPredictor(config.model_repo, max_loaded=max_loaded, poll_seconds=poll_seconds)
    if start_polling:
        predictor.start_polling()
    return predictor


def build_service_predictor(config: ServiceConfig, *, start_polling: bool = True):
    """The front end's backend: its served models (TF Serving without a repository), cache and polling."""
    return build_predictor(
        config, served_models=config.models, max_loaded=config.max_loaded, poll_seconds=config.poll_seconds,
        start_polling=start_polling,
    )


def build_audit_predictor(config: AuditConfig):
    """The audit's backend: `config.served_models` name TF Serving's models when no repository is mounted."""
    return build_predictor(
        config, served_models=config.served_models, poll_seconds=config.poll_seconds, start_polling=False
    )


@dataclass(frozen=True)
class AuditStack:
    """The audit's parts, wired: `worker` is None unless asked for (`audit run` and `audit enqueue` need none)."""

    config: AuditConfig
    predictor: Any
    store: Any
    registry: Any
    metrics: Any  # the AuditCollector registered in `registry`, or None
    runner: Any
    enqueuer: Any
    audit_sets: Any
    worker: Any = None

    def reader(self):
        """The Audits pages' view of this stack (`service.audits_web.AuditReader`), able to queue runs."""
        from audit.web_reader import StoreReader

        return StoreReader(self.store, self.config.artefacts_dir, self.enqueuer, coverage=self.coverage)

    def coverage(self):
        """Every served model's audit set (audit.audit_sets.Coverage), as `medrobust audit sets` lists them."""
        return self.audit_sets.coverage((info.name, info.card) for info in self.predictor.list_models())

    def close(self) -> None:
        """Stop the worker: its running jobs go back to the queue (their leases would expire anyway)."""
        if self.worker is not None:
            self.worker.stop()
        self.predictor.close()
        self.store.close()


def build_audit_stack(
    config: AuditConfig,
    *,
    predictor=None,
    registry=None,
    worker: bool = False,
    metrics: bool = True,
    load_dataset: Callable | None = None,
    audit_set_for: Callable | None = None,
) -> AuditStack:
    """Store (migrated to this code's schema), audit sets, runner, enqueuer, the metrics collector
    and, with `worker`, the scheduled worker.

    `predictor` defaults to the backend `config` names, behind the `max_rps` ceiling when one is
    set; `registry` to a fresh one (pass the front end's to show the audit's figures on its
    /metrics too), read from the store at scrape time. `audit_set_for(card)` names a model's audit
    set (default: the audit-sets file, then --dataset, then the card's own training data). Raises
    ValueError for an unusable audit-sets file.
    """
    from prometheus_client import CollectorRegistry

    from audit.audit_sets import load_audit_sets
    from audit.jobs import Enqueuer
    from audit.runner import AuditRunner
    from audit.store import AuditStore

    audit_sets = load_audit_sets(config.audit_sets, config.dataset)
    predictor = predictor if predictor is not None else build_audit_predictor(config)
    if config.max_rps:
        from audit.ratelimit import RateLimitedPredictor, TokenBucket

        predictor = RateLimitedPredictor(predictor, TokenBucket(config.max_rps))
    registry = registry if registry is not None else CollectorRegistry()
    store = AuditStore(config.database_url, wait_seconds=config.database_wait_seconds)
    # Asked at each scrape (a predictor that cannot list its models costs the filter, not the figures).
    collector = register_audit_collector(registry, store, audit_sets, served=lambda: predictor.list_models()) if metrics else None  # noqa: PLW0108
    runner = AuditRunner(config, predictor, store, load_dataset=load_dataset)
    enqueuer = Enqueuer(config, predictor, store, runner, audit_set_for or audit_sets.audit_set_for)
    scheduled = None
    if worker:
        from audit.scheduler import AuditWorker

        scheduled = AuditWorker(config, runner, enqueuer, registry)
    return AuditStack(config, predictor, store, registry, collector, runner, enqueuer, audit_sets, scheduled)


def register_audit_collector(registry, store, audit_sets, *, served: Callable[[], Any] | None):
    """The `medrobust_audit_*` families, read from `store` at each scrape, registered in `registry`.

    `served()` lists the served models (objects with name, versions, card: the predictor's
    `list_models`, or the repository's): only their versions are exported, and those `audit_sets`
    does not cover (if known here) are `medrobust_audit_unauditable`.
    """
    from audit.metrics import AuditCollector

    collector = AuditCollector(store, served=served, unauditable=audit_sets.unauditable if audit_sets is not None else None)
    registry.register(collector)
    return collector


def repository_models(model_repo) -> Callable[[], Any]:
    """The served models as a mounted repository lists them (no TensorFlow, no model server)."""
    from training.contract.repository import list_models

    return lambda: list_models(model_repo)


def service_audit_sets(config: ServiceConfig):
    """The workers' audit sets as the front end reads them (same variables), to name unauditable models;
    None when neither is set here: the front end then does not guess what the workers can read."""
    from audit.audit_sets import load_audit_sets

    if config.audit_sets is None and not config.audit_dataset:
        return None
    return load_audit_sets(config.audit_sets, config.audit_dataset)


def build_audit_reader(config: ServiceConfig, *, served: Callable[[], Any] | None = None):
    """A read-only view of the store a separate audit worker writes (None without a store).

    Never migrates: it waits for a writer to bring the schema to the one it reads, and refuses
    clearly if none does. Without an enqueuer, POST answers 503. With `served` (the served models),
    it also names those whose task has no audit set.
    """
    if not config.database_url:
        return None
    from audit.store import AuditStore
    from audit.web_reader import StoreReader

    artefacts = config.audit_artefacts or default_of(AuditConfig, "artefacts_dir")
    store = AuditStore(config.database_url, migrate=False, wait_seconds=config.database_wait_seconds)
    coverage = None
    audit_sets = service_audit_sets(config)
    if served is not None and audit_sets is not None:

        def coverage():
            return audit_sets.coverage((info.name, info.card) for info in served())

    return StoreReader(store, artefacts, coverage=coverage)


def build_app(config: ServiceConfig, *, predictor=None, registry=None, audits=None, read_audits: bool = True):
    """The front end: `create_app` with the backend `config` names and, when an audit reader is
    given (or `config.database_url` names a store and `read_audits`), the Audits pages.

    A reader built here from `config.database_url` also puts the audit's figures, read from the
    store at each scrape, on the app's metrics (a given reader's stack has its own collector).
    """
    from prometheus_client import CollectorRegistry

    from service.app import create_app
    from service.audits_web import audits_extension

    predictor = predictor if predictor is not None else build_service_predictor(config)
    registry = registry if registry is not None else CollectorRegistry()
    if audits is None and read_audits:
        audits = build_audit_reader(config, served=predictor.list_models)
        if audits is not None:
            register_audit_collector(registry, audits.store, service_audit_sets(config), served=predictor.list_models)
    extensions = [audits_extension(audits)] if audits is not None else []
    return create_app(config, predictor=predictor, registry=registry, extensions=extensions)


def import_master_audit_collector(database_url: str) -> None:
    """Imports every module `register_master_audit_collector` uses, the database's driver included,
    in the calling thread. gunicorn's master calls it before it forks its workers and before the
    thread that waits for the store starts: a module half-imported by another thread when a worker
    is forked stays locked in that worker, whose own import of it then waits forever (a worker hung
    at boot, which gunicorn's timeout does not catch)."""
    import importlib

    import sqlalchemy as sa

    for module in ("audit.audit_sets", "audit.metrics", "audit.migrate", "audit.store", "training.contract.repository",
                   # what audit.migrate imports inside its functions, to read the schema's revision
                   "alembic.command", "alembic.config", "alembic.runtime.migration", "alembic.script"):
        importlib.import_module(module)
    sa.engine.make_url(database_url).get_dialect().import_dbapi()


def register_master_audit_collector(config: ServiceConfig, registry) -> None:
    """`medrobust serve`'s /metrics is the gunicorn master's, which loads no model: with a store, the
    audit's figures are read there, the served models from the mounted repository (if any)."""
    if not config.database_url:
        return
    from audit.store import AuditStore

    store = AuditStore(config.database_url, migrate=False, wait_seconds=config.database_wait_seconds)
    served = repository_models(config.model_repo) if config.model_repo is not None else None
    register_audit_collector(registry, store, service_audit_sets(config), served=served)
