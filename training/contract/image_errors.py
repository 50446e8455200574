"""The errors of the one decode path: each an :class:`HttpError` with the answer it deserves.

They live apart from :mod:`training.contract.imaging` so that its sibling decoders
(:mod:`training.contract.dicom`) raise the same errors without importing it back;
:mod:`training.contract.imaging` re-exports them.
"""

from __future__ import annotations

from training.contract.errors import HttpError


class ImageError(HttpError, ValueError):
    """An image the system cannot use; ``code`` and ``http_status`` drive the HTTP answer."""

    code = "image_error"
    http_status = 400


class InvalidImage(ImageError):
    """Not an image at all, or a corrupt, truncated or empty one."""

    code = "invalid_image"
    http_status = 400


class UnsupportedImage(ImageError):
    """A real image in a format (or a DICOM transfer syntax) the decode path cannot read."""

    code = "unsupported_media_type"
    http_status = 415


class ImageTooLarge(ImageError):
    """More pixels than allowed (including decompression bombs and long multi-frame files)."""

    code = "image_too_large"
    http_status = 413


class ImageTooSmall(ImageError):
    """A side shorter than the smallest side allowed."""

    code = "image_too_small"
    http_status = 400


class NoPixelData(ImageError):
    """A DICOM object that holds no image at all: a structure set, a report, a DICOMDIR."""

    code = "no_pixel_data"
    http_status = 400
