"""The Audits surface of the front end: `/audits` pages and `/api/v1/audits`, plugged in via `extensions`.

`audits_extension(reader)` returns the `ext(app)` callable that `create_app` takes. The front end
reads runs through the small `AuditReader` interface below, which the composition root builds over
the audit store (`audit.web_reader.StoreReader`): the front end never imports the audit. A reader
that cannot submit (a front end beside a separate audit worker) lists, shows and cancels runs but
answers POST with 503.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from flask import Blueprint, Flask, abort, current_app, render_template, request, send_from_directory, url_for

from service.auth import require_admin, require_page_token, require_token
from service.errors import api_error
from service.readable import duration_text, grey_levels
from service.state import add_nav_link, add_openapi_paths

bp = Blueprint("audits", __name__)
_KEY = "medrobust_audits"
# The store's run ids are INTEGER keys (PostgreSQL's int4): a larger number names no run, and must
# be answered 404 before it reaches the database (SQLite and PostgreSQL both refuse to bind it).
MAX_RUN_ID = 2**31 - 1


class AuditReader(Protocol):
    """What the Audits pages need from the audit store. A run is any object with `id`, `status`,
    `to_json()` and the attributes the template shows."""

    can_submit: bool

    def submit(self, model: str) -> int: ...

    def cancel(self, run_id: int) -> str | None: ...  # "cancelled" or "cancelling"; None: no such run

    def active(self) -> dict[str, int]: ...

    def unauditable(self) -> list[dict[str, str]]: ...  # served models whose task has no audit set: {"model", "task"}

    def list_runs(self, *, model: str | None = None, status: str | None = None, limit: int = 100) -> Sequence[Any]: ...

    def get_run(self, run_id: int) -> Any | None: ...

    def page(self, run: Any) -> Any: ...  # partner, header, table, warning, black_box

    def picture(self, run: Any, name: str) -> Path | None: ...


def _reader() -> AuditReader:
    return current_app.extensions[_KEY]


def audits_extension(reader: AuditReader) -> Callable[[Flask], None]:
    """The extension adding the Audits page and API to an app built by `create_app`."""

    def init_app(app: Flask) -> None:
        app.extensions[_KEY] = reader
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
            "summary": "One run with its per-epsilon points, sanity checks and progress", "operationId": "getAudit",
            "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
            "responses": {"200": _RUN, "401": _ERROR, "404": _ERROR},
        },
        "delete": {
            "summary": "Cancel a queued or running run (admin token)", "operationId": "deleteAudit",
            "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"202": _RUN, "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR},
        },
    },
    "/api/v1/audits/{run_id}/cancel": {
        "post": {
            "summary": "Cancel a queued or running run (admin token)", "operationId": "cancelAudit",
            "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"202": _RUN, "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR},
        },
    },
}

@bp.post("/api/v1/audits")
@require_admin
def start_audit():
    """Queue an audit of one model now: 202 with the run id, 409 while the same audit is queued or running."""
    reader = _reader()
    if not reader.can_submit:
        return api_error("audits_unavailable", "this front end has no audit runner; run `medrobust audit worker` or `medrobust up`", 503)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return api_error("invalid_request", f"expected a JSON body {{\"model\": NAME}}, got {request.get_data(as_text=True)[:200]!r}", 400)
    run_id = reader.submit(body["model"])  # the same audit queued or running answers 409 (an HttpError)
    response = {"run_id": run_id, "status": "queued", "url": url_for("audits.get_audit", run_id=run_id)}
    return response, 202, {"Location": response["url"]}


@bp.post("/api/v1/audits/<int:run_id>/cancel")
@bp.delete("/api/v1/audits/<int:run_id>")
@require_admin
def cancel_audit(run_id: int):
    """Cancel a run: a queued one at once (`cancelled`), a running one at its worker's next checkpoint
    (`cancelling`); 409 for a run that has ended."""
    status = _reader().cancel(run_id)  # an ended run answers 409 (an HttpError)
    if status is None:
        return api_error("audit_not_found", f"expected the id of a stored audit run, got {run_id}", 404)
    response = {"run_id": run_id, "status": status, "url": url_for("audits.get_audit", run_id=run_id)}
    return response, 202


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
    runs = _reader().list_runs(model=request.args.get("model"), status=request.args.get("status"), limit=limit)
    # Beside the runs, the served models that have none because no audit set covers their task.
    return {"audits": [_summary(r) for r in runs], "unauditable": _reader().unauditable()}


@bp.get("/api/v1/audits/<int:run_id>")
@require_token
def get_audit(run_id: int):
    """One run with its per-epsilon points and sanity checks."""
    run = _reader().get_run(run_id) if run_id <= MAX_RUN_ID else None
    if run is None:
        return api_error("audit_not_found", f"expected the id of a stored audit run, got {run_id}", 404)
    return _summary(run)


# -- pages --------------------------------------------------------------------------------------
bp.add_app_template_filter(duration_text, "duration")


def _page_error(status: int, title: str, message: str):
    """A page's error as a page (a person followed a link), with the status a program would get."""
    return render_template("error.html", status=status, title=title, message=message), status


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


@bp.get("/audits")
@require_page_token
def audits_page():
    """Every run, and the report of the chosen (or newest succeeded) run."""
    reader = _reader()
    asked = request.args.get("run")
    if asked is not None and not (asked.isascii() and asked.isdigit()):
        return _page_error(400, "Not a run id", f"Expected ?run= to be a run id (a whole number), got {_shown(asked)}.")
    runs = reader.list_runs(limit=200)
    if asked is not None:
        selected = reader.get_run(int(asked)) if int(asked) <= MAX_RUN_ID else None
        if selected is None:
            return _page_error(
                404, "No such run", f"No audit run has the id {_shown(asked)}; the list of runs is on the Audits page."
            )
    else:
        newest = next((r for r in runs if r.status == "succeeded"), None)
        selected = reader.get_run(newest.id) if newest else None
    page = reader.page(selected) if selected is not None and selected.status == "succeeded" else None
    # Chance is 1/K over the audit set's classes (a class no image stood for still counts).
    classes: list[str] = []
    if page is not None:
        classes = list(getattr(page, "class_names", ())) or sorted({c for p in selected.points for c in (p["per_class"] or {})})
    return render_template(
        "audits.html", runs=runs, selected=selected, partner=page.partner if page else None,
        header=page.header if page else [], table=page.table if page else [], warning=page.warning if page else None,
        black_box=getattr(page, "black_box", None),
        active=reader.active(), unauditable=reader.unauditable(), chance=1 / len(classes) if classes else None, classes=classes,
        example_epsilon=grey_levels(0.01), clean=getattr(page, "clean", ""), intervals_note=getattr(page, "intervals_note", ""),
        has_examples=page is not None and reader.picture(selected, "examples.png") is not None,
    )


@bp.get("/audits/<int:run_id>/<name>")
@require_page_token
def audit_file(run_id: int, name: str):
    """A report picture of a succeeded run."""
    reader = _reader()
    run = reader.get_run(run_id) if run_id <= MAX_RUN_ID else None
    path = reader.picture(run, name) if run is not None else None
    if path is None:
        abort(404, description=(
            f"expected accuracy.png or examples.png of a succeeded audit run, got run {run_id}'s {_shown(name)}"
        ))
    return send_from_directory(path.parent.resolve(), path.name, mimetype="image/png", max_age=0)
