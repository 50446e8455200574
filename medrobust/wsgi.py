"""For running under an external WSGI server: `gunicorn 'medrobust.wsgi:create()'` (config from MEDROBUST_*)."""

from __future__ import annotations

from flask import Flask


def create() -> Flask:
    """The app configured from the environment (called by the server in each worker)."""
    from medrobust.compose import build_app
    from training.contract.config import ServiceConfig, read_config

    return build_app(read_config(ServiceConfig))
