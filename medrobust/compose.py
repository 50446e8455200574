"""The composition root: the only code that builds predictors, stores, runners, workers, metrics and
the app from a configuration. `up`, the commands, gunicorn's entry and `reproduce` call it.

Everything below the command package takes its collaborators as arguments; this module decides
which ones. Imports are inside the functions: building nothing at import time keeps `--help` instant.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.contract.config import AuditConfig, ServiceConfig, default_of

log = logging.getLogger(__name__)


def build_predictor(config: ServiceConfig | AuditConfig, *, start_polling: bool = True):
    """The backend `config` names: TF Serving at `config.tf_serving`, else the embedded one over
    `config.model_repo` (which polls for new versions in the background when `start_polling`)."""
    if config.tf_serving:
        from service.tfserving import TFServingPredictor

        return TFServingPredictor(
            config.tf_serving,
            deadline_seconds=config.grpc_deadline_seconds,
            model_repo=config.model_repo,
            models=config.models,
            max_batch_size=config.tf_serving_max_batch,
        )
    from service.embedded import EmbeddedPredictor

    if config.model_repo is None:
        raise ValueError("expected a model repository or a TF Serving address, got neither")
    predictor = EmbeddedPredictor(
        config.model_repo,
        max_loaded=getattr(config, "max_loaded", default_of(ServiceConfig, "max_loaded")),
        poll_seconds=getattr(config, "poll_seconds", default_of(ServiceConfig, "poll_seconds")),
    )
    if start_polling:
        predictor.start_polling()
    return predictor


@dataclass(frozen=True)
class AuditStack:
    """The audit's parts, wired: `worker` is None unless asked for (`audit run` and `audit enqueue` need none)."""

    config: AuditConfig
    predictor: Any
    store: Any
    registry: Any
    runner: Any
    enqueuer: Any
    worker: Any = None

    def reader(self):
        """The Audits pages' view of this stack (`service.audits_web.AuditReader`), able to queue runs."""
        from audit.web_reader import StoreReader

        return StoreReader(self.store, self.config.artefacts_dir, self.enqueuer)

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
    """Store (migrated to this code's schema), runner, enqueuer and, with `worker`, the worker.

    `predictor` defaults to the backend `config` names, behind the `max_rps` ceiling when one is
    set; `registry` to a fresh one (pass the front end's to show the audit's figures on its
    /metrics too), read from the store at scrape time; `audit_set_for(card)` names a model's audit
    set (default: the configured --dataset for every model).
    """
    from prometheus_client import CollectorRegistry

    from audit.jobs import Enqueuer
    from audit.runner import AuditRunner
    from audit.store import AuditStore

    predictor = predictor if predictor is not None else build_predictor(config, start_polling=False)
    if config.max_rps:
        from audit.ratelimit import RateLimitedPredictor, TokenBucket

        predictor = RateLimitedPredictor(predictor, TokenBucket(config.max_rps))
    if metrics:
        _single_process_metrics()
    registry = registry if registry is not None else CollectorRegistry()
    store = AuditStore(config.database_url, wait_seconds=config.database_wait_seconds)
    if metrics:
        registry.register(_StoreFigures(store, predictor))
    runner = AuditRunner(config, predictor, store, load_dataset=load_dataset)
    enqueuer = Enqueuer(config, predictor, store, runner, audit_set_for)
    scheduled = None
    if worker:
        from audit.scheduler import AuditWorker

        scheduled = AuditWorker(config, runner, enqueuer, registry)
    return AuditStack(config, predictor, store, registry, runner, enqueuer, scheduled)


class _StoreFigures:
    """The audit's metrics read from the store at every scrape (nothing kept between scrapes), so
    every process with a metrics port shows the same figures and no counter is pushed twice; the
    series of versions `predictor` no longer serves are left out. Stands in for the audit package's
    scrape-time collector where that is not wired yet."""

    def __init__(self, store, predictor=None):
        self.store = store
        self.predictor = predictor

    def collect(self):
        from prometheus_client import CollectorRegistry

        from audit.metrics import AuditMetrics

        registry = CollectorRegistry()
        metrics = AuditMetrics(registry)
        metrics.restore(self.store)
        served = ()
        if self.predictor is not None:
            try:
                served = self.predictor.list_models()
            except Exception as exc:  # a model server away now must not cost the scrape the store's figures
                log.warning("served models not listed for the audit's metrics: %s: %s", type(exc).__name__, exc)
                served = None
        if served is not None and self.predictor is not None:
            for info in served:
                metrics.declare(info.name)
            metrics.retain({info.name: set(info.versions) for info in served})
        yield from registry.collect()


def _single_process_metrics() -> None:
    """The image sets PROMETHEUS_MULTIPROC_DIR for gunicorn's workers; in the audit worker (and
    `up`'s one process), files kept there across a container restart (PID 1 again, the same file)
    would add old counts a second time. Values created from here on are plain in-memory ones."""
    if os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None) is not None:
        import prometheus_client.values as values

        values.ValueClass = values.get_value_class()


def build_audit_reader(config: ServiceConfig):
    """A read-only view of the store a separate audit worker writes (None without a store).

    Never migrates: it waits for a writer to bring the schema to the one it reads, and refuses
    clearly if none does. Without an enqueuer, POST answers 503.
    """
    if not config.database_url:
        return None
    from audit.store import AuditStore
    from audit.web_reader import StoreReader

    artefacts = config.audit_artefacts or default_of(AuditConfig, "artefacts_dir")
    return StoreReader(AuditStore(config.database_url, migrate=False, wait_seconds=config.database_wait_seconds), artefacts)


def build_app(config: ServiceConfig, *, predictor=None, registry=None, audits=None, read_audits: bool = True):
    """The front end: `create_app` with the backend `config` names and, when an audit reader is
    given (or `config.database_url` names a store and `read_audits`), the Audits pages."""
    from service.app import create_app
    from service.audits_web import audits_extension

    predictor = predictor if predictor is not None else build_predictor(config)
    if audits is None and read_audits:
        audits = build_audit_reader(config)
    extensions = [audits_extension(audits)] if audits is not None else []
    return create_app(config, predictor=predictor, registry=registry, extensions=extensions)
