"""The one error family that becomes an HTTP answer: a code, a status and a message.

The API, the Audits pages and the audit endpoints raise these; the front end turns any of them
into `{"error": {"code", "message"}}` in one handler. Backends raise the predictor errors below,
so the front end answers a server's failure without knowing which server it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class HttpError(Exception):
    """An error with the HTTP answer it deserves; subclasses set `code` and `http_status`."""

    code = "error"
    http_status = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.details = dict(details or {})
        self.headers = dict(headers or {})


class PredictorError(HttpError):
    """Base of the errors a model-server backend raises."""

    code = "backend_error"
    http_status = 502
    grpc_code: str | None = None  # TF Serving's status code when it gave the error (service.metrics counts it)


class ModelNotFound(PredictorError):
    code = "model_not_found"
    http_status = 404


class InvalidInput(PredictorError):
    code = "invalid_input"
    http_status = 400


class BackendUnavailable(PredictorError):
    code = "backend_unavailable"
    http_status = 503


class BackendTimeout(PredictorError):
    code = "backend_timeout"
    http_status = 504


class SignatureMissing(PredictorError):
    """The model does not export a signature the caller needs (for example `vjp` for the audit)."""

    code = "signature_missing"
    http_status = 422
