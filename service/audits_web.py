"""The Audits surface of the front end: `/audits` pages and `/api/v1/audits`, plugged in via `extensions`.

`audits_extension(store, runner=None, artefacts_dir=...)` returns the `ext(app)` callable that
`create_app` takes. Without a runner (a front end beside a separate audit worker) the API lists and
shows runs but answers POST with 503.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, Flask, abort, current_app, render_template, request, send_from_directory, url_for

from service.auth import require_admin, require_token
from service.errors import api_error

bp = Blueprint("audits", __name__)
_KEY = "medrobust_audits"


class _AuditsState:
    def __init__(self, store, runner, artefacts_dir: Path):
        self.store = store
        self.runner = runner
        self.artefacts_dir = Path(artefacts_dir)


def _state() -> _AuditsState:
    return current_app.extensions[_KEY]


def audits_extension(store, runner=None, *, artefacts_dir: str | Path = ".medrobust/audits") -> Callable[[Flask], None]:
    """The extension adding the Audits page and API to an app built by `create_app`."""

    def init_app(app: Flask) -> None:
        from service.app import add_nav_link, add_openapi_paths

        app.extensions[_KEY] = _AuditsState(store, runner, Path(artefacts_dir))
        app.register_blueprint(bp)
        add_nav_link(app, "Audits", "/audits")
        add_openapi_paths(app, OPENAPI_PATHS)

    return init_app


def _summary(run) -> dict:
    doc = run.to_json()
    doc["url"] = url_for("audits.get_audit", run_id=run.id)
    return doc


# -- API ----------------------------------------------------------------------------------------
_ERROR = {"$ref": "#/components/responses/Error"}
_RUN = {"description": "an audit run", "content": {"application/json": {"schema": {"type": "object"}}}}
OPENAPI_PATHS = {
    "/api/v1/audits": {
        "post": {
            "summary": "Audit one model now (admin token)", "operationId": "startAudit",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["model"], "properties": {"model": {"type": "string"}},
            }}}},
            "responses": {"202": _RUN, "400": _ERROR, "401": _ERROR, "403": _ERROR, "409": _ERROR, "503": _ERROR},
        },
        "get": {
            "summary": "Audit runs, newest first", "operationId": "listAudits",
            "parameters": [
                {"name": "model", "in": "query", "schema": {"type": "string"}},
                {"name": "status", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            ],
            "responses": {"200": _RUN, "400": _ERROR, "401": _ERROR},
        },
    },
    "/api/v1/audits/{run_id}": {
        "get": {
            "summary": "One run with its per-epsilon points and sanity checks", "operationId": "getAudit",
            "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": _RUN, "401": _ERROR, "404": _ERROR},
        },
    },
}

@bp.post("/api/v1/audits")
@require_admin
def start_audit():
    """Run an audit of one model now: 202 with the run id, 409 while that model is being audited."""
    from audit.runner import AuditInProgress

    state = _state()
    if state.runner is None:
        return api_error("audits_unavailable", "this front end has no audit runner; run `medrobust audit worker` or `medrobust up`", 503)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return api_error("invalid_request", f"expected a JSON body {{\"model\": NAME}}, got {request.get_data(as_text=True)[:200]!r}", 400)
    try:
        run_id = state.runner.submit(body["model"], trigger="api")
    except AuditInProgress as exc:
        return api_error(exc.code, str(exc), exc.http_status)
    response = {"run_id": run_id, "status": "running", "url": url_for("audits.get_audit", run_id=run_id)}
    return response, 202, {"Location": response["url"]}


@bp.get("/api/v1/audits")
@require_token
def list_audits():
    """Runs, newest first; `?model=` and `?status=` filter, `?limit=` caps (default 100)."""
    try:
        limit = int(request.args.get("limit", 100))
    except ValueError:
        return api_error("invalid_request", f"expected limit as an integer, got {request.args.get('limit')!r}", 400)
    if not 1 <= limit <= 1000:
        return api_error("invalid_request", f"expected limit in 1..1000, got {limit}", 400)
    runs = _state().store.list_runs(model=request.args.get("model"), status=request.args.get("status"), limit=limit)
    return {"audits": [_summary(r) for r in runs]}


@bp.get("/api/v1/audits/<int:run_id>")
@require_token
def get_audit(run_id: int):
    """One run with its per-epsilon points and sanity checks."""
    from audit.store import RunNotFound

    try:
        run = _state().store.get_run(run_id)
    except RunNotFound as exc:
        return api_error("audit_not_found", str(exc), 404)
    return _summary(run)


# -- pages --------------------------------------------------------------------------------------
@bp.get("/audits")
def audits_page():
    """Every run, and the report of the chosen (or newest succeeded) run."""
    from audit.report import degenerate_warning, dominant_class, points_table
    from audit.store import RunNotFound

    state = _state()
    runs = state.store.list_runs(limit=200)
    chosen = request.args.get("run", type=int)
    selected = None
    if chosen is not None:
        try:
            selected = state.store.get_run(chosen)
        except RunNotFound:
            abort(404)
    else:
        newest = next((r for r in runs if r.status == "succeeded"), None)
        selected = state.store.get_run(newest.id) if newest else None
    succeeded = selected is not None and selected.status == "succeeded"
    partner = state.store.partner_run(selected) if succeeded else None
    header, table = points_table(selected) if succeeded else ([], [])
    warning = degenerate_warning(selected, dominant_class(state.store, selected)) if succeeded else None
    return render_template(
        "audits.html", runs=runs, selected=selected, partner=partner, header=header, table=table, warning=warning,
        active=state.runner.active() if state.runner is not None else {},
    )


@bp.get("/audits/<int:run_id>/<name>")
def audit_file(run_id: int, name: str):
    """A report picture of a run, drawn on first request."""
    from audit.report import EXAMPLES, FIGURE, report_dir, write_report
    from audit.store import RunNotFound

    if name not in (FIGURE, EXAMPLES):
        abort(404)
    state = _state()
    try:
        run = state.store.get_run(run_id)
    except RunNotFound:
        abort(404)
    if run.status != "succeeded":
        abort(404)
    folder = report_dir(run, state.artefacts_dir)
    if not (folder / name).is_file():
        write_report(state.store, run_id, artefacts_root=state.artefacts_dir)
        if not (folder / name).is_file():
            abort(404)
    response = send_from_directory(folder.resolve(), name, mimetype="image/png", max_age=0)
    return response
