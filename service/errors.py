"""Every error the HTTP API answers, as JSON `{"error": {"code", "message"}}` with its status.

Domain errors (bad images, predictor failures) become HTTP answers here and only here.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from training.contract.errors import HttpError

log = logging.getLogger(__name__)

# Werkzeug's exceptions, named the way the rest of the API names its codes.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


class ApiError(HttpError):
    """Raise from a view to answer `{"error": {"code", "message"}}` with `status`: the family's
    shorthand for errors the API itself finds, code first as the answer reads."""

    def __init__(self, code: str, message: str, status: int = 400, *, headers: dict[str, str] | None = None):
        super().__init__(message, code=code, http_status=status, headers=headers)


def api_error(code: str, message: str, status: int = 400, *, headers: dict[str, str] | None = None) -> Response:
    """The JSON error response (return it from a view, or raise `ApiError`)."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error as JSON; a bug answers a JSON 500, logged without the request body."""

    @app.errorhandler(HttpError)
    def _known(exc: HttpError):
        # Bad images, bad requests, backend failures and audit conflicts: one family, one answer.
        if exc.http_status >= 500:
            log.warning("%s on %s %s: %s", exc.code, request.method, request.path, exc.message)
        return api_error(exc.code, exc.message, exc.http_status, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"expected a request body of at most {limit:,} bytes (MEDROBUST_MAX_UPLOAD_BYTES), got more"
        response = api_error(_HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")), message, status)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # The traceback helps; the request body never goes to the log (it is patient data).
        log.exception("unexpected error on %s %s", request.method, request.path)
        return api_error("internal_error", f"the server failed unexpectedly ({type(exc).__name__}); see its log", 500)
