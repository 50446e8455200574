"""`create_app(config)`: the Flask front end (blueprints `ui`, `api`, `health`), flaskr style.

Collaborators (the predictor, the metrics) are attached at creation; `extensions` are callables
`ext(app)` that add more (the Audits blueprint plugs in here, reusing `api_error`,
`require_admin`, `require_token`, and `service.state`'s `add_nav_link` and `add_openapi_paths`).
The blueprints reach the app's collaborators through `service.state`, never through this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, g, request
from prometheus_client import CollectorRegistry

from service.errors import register_error_handlers
from service.instrumented import InstrumentedPredictor
from service.json_provider import OrjsonProvider
from service.metrics import ServiceMetrics
from service.predictor import Predictor
from service.readiness import ReadinessProbe
from service.state import ServiceState, add_nav_link
from service.uploads import InMemoryRequest
from training.contract.config import ServiceConfig

# No CDN, no inline script or style: everything the page runs comes from /static.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# The method label's values: HTTP's own methods, everything else counted as "other" so invented
# methods cannot create series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


def create_app(
    config: ServiceConfig,
    *,
    predictor: Predictor,
    extensions: Sequence[Callable[[Flask], None]] = (),
    registry: CollectorRegistry | None = None,
) -> Flask:
    """Build the app around `predictor` (`medrobust.compose.build_app` picks the backend `config` names)."""
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.json = OrjsonProvider(app)
    app.config.update(MAX_CONTENT_LENGTH=config.max_upload_bytes)
    metrics = ServiceMetrics(registry if registry is not None else CollectorRegistry())
    instrumented = InstrumentedPredictor(predictor, metrics)
    app.extensions["medrobust"] = ServiceState(
        config, instrumented, metrics, ReadinessProbe(instrumented), threading.BoundedSemaphore(config.max_decodes)
    )

    register_error_handlers(app)
    _instrument(app, metrics)

    from service import api, health, ui

    app.register_blueprint(ui.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    add_nav_link(app, "Predict", "/")

    @app.context_processor
    def _nav() -> dict[str, Any]:
        return {"nav_links": app.extensions["medrobust"].nav_links}

    for extension in extensions:
        extension(app)
    return app


def _instrument(app: Flask, metrics: ServiceMetrics) -> None:
    """Request counts and latencies by route template (bounded labels), and the security headers."""

    @app.before_request
    def _start() -> None:
        g.medrobust_started = time.perf_counter()

    @app.after_request
    def _finish(response):
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("medrobust_started")
        if started is not None:
            metrics.http_duration.labels(endpoint).observe(time.perf_counter() - started)
        method = request.method if request.method in KNOWN_METHODS else "other"  # any 3-20 letter token gets here
        metrics.http_requests.labels(endpoint, method, str(response.status_code)).inc()
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response
