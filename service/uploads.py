"""Reading an uploaded image from a request, in memory only (uploads are patient data)."""

from __future__ import annotations

import io

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from service.errors import ApiError

IMAGE_FIELD = "image"


class InMemoryRequest(Request):
    """Werkzeug spools multipart files over 500 KB to a temporary file; keep them in memory instead.

    The body size is bounded by MAX_CONTENT_LENGTH before parsing, so memory stays bounded too.
    """

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def _form_file(request: Request):
    """The `image` part; a form over Werkzeug's part or field limits is a 413 that says so."""
    try:
        return request.files.get(IMAGE_FIELD)
    except RequestEntityTooLarge:
        limit = request.max_content_length
        if request.content_length is not None and limit is not None and request.content_length > limit:
            raise  # the body itself is too large: the app's handler says so
        raise ApiError(
            "payload_too_large",
            f"expected a multipart form of at most {request.max_form_parts:,} parts, with non-file fields of at most "
            f"{request.max_form_memory_size:,} bytes; got more (send the image as the one part named {IMAGE_FIELD!r})",
            413,
        ) from None


def read_upload(request: Request) -> bytes:
    """The image bytes: multipart field `image`, or the raw body sent with an `image/*` content type."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        upload = _form_file(request)
        if upload is None:
            # A part without a name is keyed None: name it so the message (and sorting) never fails on it.
            fields = sorted({"(a part without a name)" if f is None else str(f) for f in (*request.files, *request.form)})
            raise ApiError(
                "missing_image", f"expected a multipart field named {IMAGE_FIELD!r}, got fields {fields}", 400,
            )
        return upload.read()
    if mimetype.startswith("image/"):
        return request.get_data(cache=False)
    raise ApiError(
        "unsupported_media_type",
        f"expected multipart/form-data with an {IMAGE_FIELD!r} field or an image/* body, got {mimetype or 'no content type'}",
        415,
    )
