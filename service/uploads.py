"""Reading an uploaded image from a request, in memory only (uploads are patient data)."""

from __future__ import annotations

import io

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from service.errors import ApiError
from training.contract.dicom import is_dicom
from training.contract.image_errors import InvalidImage

IMAGE_FIELD = "image"
DICOM_MIMETYPE = "application/dicom"


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


def _declared_dicom(data: bytes, declared_as: str) -> bytes:
    """`data`, checked to be DICOM since the client said so (image bytes are sniffed, not trusted, otherwise)."""
    if data and not is_dicom(data):
        raise InvalidImage(
            f"expected DICOM for {declared_as}: a Part 10 file ('DICM' at byte 128) or a headerless "
            f"ACR-NEMA data set (starting with a group 0008 element), got {len(data):,} bytes that are neither"
        )
    return data


def _raw_body(request: Request) -> bytes:
    """The whole body, or 413 when a chunked one runs past MAX_CONTENT_LENGTH.

    With a Content-Length the limit is checked before reading. A chunked body has none: Werkzeug
    reads it up to the limit and stops there without complaint, so the truncated bytes would be
    taken for the upload (and refused as a corrupt image). One more byte from the server's own
    stream tells a body of exactly the limit from a longer one.
    """
    data = request.get_data(cache=False)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    return data


def read_upload(request: Request) -> bytes:
    """The image bytes: multipart field `image`, or the raw body sent with an `image/*` or
    `application/dicom` content type. A multipart DICOM is a `.dcm` file or sniffed from its bytes."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        upload = _form_file(request)
        if upload is None:
            # A part without a name is keyed None: name it so the message (and sorting) never fails on it.
            fields = sorted({"(a part without a name)" if f is None else str(f) for f in (*request.files, *request.form)})
            raise ApiError(
                "missing_image", f"expected a multipart field named {IMAGE_FIELD!r}, got fields {fields}", 400,
            )
        data = upload.read()
        # The file name is never repeated: an export may name the file after the patient.
        if (upload.filename or "").lower().endswith(".dcm") or upload.mimetype == DICOM_MIMETYPE:
            return _declared_dicom(data, "a .dcm or application/dicom file")
        return data
    if mimetype.startswith("image/"):
        return _raw_body(request)
    if mimetype == DICOM_MIMETYPE:
        return _declared_dicom(_raw_body(request), "an application/dicom body")
    raise ApiError(
        "unsupported_media_type",
        f"expected multipart/form-data with an {IMAGE_FIELD!r} field, an image/* body or an {DICOM_MIMETYPE} body, "
        f"got {mimetype or 'no content type'}",
        415,
    )
