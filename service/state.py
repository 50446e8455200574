"""What the views share: the app's collaborators, reachable from any blueprint.

Blueprints import this module, never `service.app` (which imports the blueprints), so the front
end's modules form no cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

from service.instrumented import InstrumentedPredictor
from service.metrics import ServiceMetrics
from service.readiness import ReadinessProbe
from training.contract.config import ServiceConfig


@dataclass
class ServiceState:
    """What the views need, reachable as `current_app.extensions["medrobust"]`."""

    config: ServiceConfig
    predictor: InstrumentedPredictor
    metrics: ServiceMetrics
    readiness: ReadinessProbe
    decode_slots: threading.BoundedSemaphore  # config.max_decodes uploads decoded at once in this process
    nav_links: list[tuple[str, str]] = field(default_factory=list)  # (label, url)
    openapi_paths: dict[str, Any] = field(default_factory=dict)


def state() -> ServiceState:
    """The running app's ServiceState."""
    return current_app.extensions["medrobust"]


def add_nav_link(app: Flask, label: str, url: str) -> None:
    """A link in the page's navigation bar (the audit adds "Audits")."""
    app.extensions["medrobust"].nav_links.append((label, url))


def add_openapi_paths(app: Flask, paths: Mapping[str, Any]) -> None:
    """Extra OpenAPI path items served in `/api/v1/openapi.json`."""
    app.extensions["medrobust"].openapi_paths.update(paths)
