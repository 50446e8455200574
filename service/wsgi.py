"""For running under an external WSGI server: `gunicorn 'service.wsgi:create()'` (config from MEDROBUST_*)."""

from __future__ import annotations

from flask import Flask


def create() -> Flask:
    """The app configured from the environment (called by the server in each worker)."""
    from service.app import create_app
    from service.config import ServiceConfig
    from service.server import audit_pages

    config = ServiceConfig.from_env()
    return create_app(config, extensions=audit_pages(config))
