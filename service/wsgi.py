"""For running under an external WSGI server: `gunicorn 'service.wsgi:create()'` (config from MEDROBUST_*)."""

from __future__ import annotations

from flask import Flask


def create() -> Flask:
    """The app configured from the environment (called by the server in each worker)."""
    from service.app import create_app
    from service.config import ServiceConfig

    return create_app(ServiceConfig.from_env())
