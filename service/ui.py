"""The web page: pick a model, drop an image, see the diagnosis beside its Grad-CAM overlay."""

from __future__ import annotations

import logging
from collections import defaultdict

from flask import Blueprint, Response, abort, render_template, request, send_from_directory

from service.auth import require_page_token
from service.card_summary import card_summary
from service.overlay import ATTENTION_COLORMAP, HEATMAP_COLORMAP, colour_scale_png
from training.contract.errors import PredictorError

bp = Blueprint("ui", __name__)  # templates and static files are the app's (service/templates, service/static)
log = logging.getLogger(__name__)


@bp.get("/")
@require_page_token  # the model list says what is deployed: behind the token like the rest
def index():
    from service.state import state

    s = state()
    by_task: dict[str, list] = defaultdict(list)
    problem = None
    try:
        for m in s.predictor.list_models():
            by_task[str(m.card.get("task", "other"))].append((m, card_summary(m.card)))
    except PredictorError as exc:
        problem = f"The model backend cannot be reached ({exc.message}). Try again shortly."
    # A browser that opened the page with the token as its Basic password gets it in the token field,
    # so the page's API calls (bearer only: a browser never sends that by itself) need no second entry.
    auth = request.authorization
    given = auth.password if s.config.api_token is not None and auth is not None and auth.type == "basic" else None
    page = render_template(
        "index.html",
        models_by_task=dict(sorted(by_task.items())),
        problem=problem,
        needs_token=s.config.api_token is not None,
        token=given or "",
        max_upload_bytes=s.config.max_upload_bytes,
        heatmap_colormap=HEATMAP_COLORMAP,
        attention_colormap=ATTENTION_COLORMAP,
    )
    response = Response(page, mimetype="text/html")
    if given:
        response.headers["Cache-Control"] = "no-store"  # it holds the token
    return response


@bp.get("/colour-scale/<name>.png")
def colour_scale(name: str):
    """The legend bar of an overlay's colour map (only the two the overlays use)."""
    if name not in (HEATMAP_COLORMAP, ATTENTION_COLORMAP):
        abort(404, description=f"expected a colour map the overlays use ({HEATMAP_COLORMAP}, {ATTENTION_COLORMAP}), got {name}")
    response = Response(colour_scale_png(name), mimetype="image/png")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


# Swagger UI's own files, served from the package that ships them (swagger-ui-bundle): the machine
# may be offline, and the Content-Security-Policy allows no CDN.
SWAGGER_UI_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"})


@bp.get("/api/docs")
def api_docs():
    """Swagger UI over /api/v1/openapi.json: try the API from the browser (public, as the description is)."""
    return render_template("api_docs.html")


@bp.get("/api/docs/assets/<name>")
def api_docs_asset(name: str):
    from swagger_ui_bundle import swagger_ui_path

    if name not in SWAGGER_UI_FILES:
        abort(404, description=f"expected one of Swagger UI's files ({', '.join(sorted(SWAGGER_UI_FILES))}), got {name}")
    return send_from_directory(str(swagger_ui_path), name, max_age=86400)
