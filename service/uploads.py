"""Reading an uploaded image from a request, in memory only (uploads are patient data)."""

from __future__ import annotations

import io

from flask import Request

from service.errors import ApiError

IMAGE_FIELD = "image"


class InMemoryRequest(Request):
    """Werkzeug spools multipart files over 500 KB to a temporary file; keep them in memory instead.

    The body size is bounded by MAX_CONTENT_LENGTH before parsing, so memory stays bounded too.
    """

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def read_upload(request: Request) -> bytes:
    """The image bytes: multipart field `image`, or the raw body sent with an `image/*` content type."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        upload = request.files.get(IMAGE_FIELD)
        if upload is None:
            raise ApiError(
                "missing_image",
                f"expected a multipart field named {IMAGE_FIELD!r}, got fields {sorted(set(request.files) | set(request.form))}",
                400,
            )
        return upload.read()
    if mimetype.startswith("image/"):
        return request.get_data(cache=False)
    raise ApiError(
        "unsupported_media_type",
        f"expected multipart/form-data with an {IMAGE_FIELD!r} field or an image/* body, got {mimetype or 'no content type'}",
        415,
    )
