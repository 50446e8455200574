"""The web page: pick a model, drop an image, see the diagnosis beside its Grad-CAM overlay."""

from __future__ import annotations

import logging
from collections import defaultdict

from flask import Blueprint, render_template

from training.contract.errors import PredictorError

bp = Blueprint("ui", __name__)  # templates and static files are the app's (service/templates, service/static)
log = logging.getLogger(__name__)


@bp.get("/")
def index():
    from service.state import state

    s = state()
    by_task: dict[str, list] = defaultdict(list)
    problem = None
    try:
        for m in s.predictor.list_models():
            by_task[str(m.card.get("task", "other"))].append(m)
    except PredictorError as exc:
        problem = f"The model backend cannot be reached ({exc.message}). Try again shortly."
    return render_template(
        "index.html",
        models_by_task=dict(sorted(by_task.items())),
        problem=problem,
        needs_token=s.config.api_token is not None,
        max_upload_bytes=s.config.max_upload_bytes,
    )
