"""Bearer tokens: the API token (optional) and the admin token (always required for admin actions).

Pages a browser opens by link (the Audits pages and their pictures) cannot carry a bearer header, so
they also take the token as the password of HTTP Basic authentication, which the browser asks for.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import TypeVar

from flask import current_app, request

from service.errors import ApiError

F = TypeVar("F", bound=Callable)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="medrobust"'}
# Basic, so a browser prompts for it: any user name, the API token as the password.
_PAGE_CHALLENGE = {"WWW-Authenticate": 'Basic realm="medrobust: any user name, the API token as password", charset="UTF-8"'}


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _basic_password() -> str | None:
    auth = request.authorization
    return auth.password if auth is not None and auth.type == "basic" and auth.password else None


def _matches(given: str | None, expected: str | None) -> bool:
    # compare_digest takes time independent of where the strings differ.
    return given is not None and expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_api_token(*, page: bool = False) -> None:
    """Raise 401 unless the API is open (no MEDROBUST_API_TOKEN) or the bearer token is the API or admin token.

    A `page` also takes the token as the Basic password, and its 401 asks the browser for it.
    """
    config = current_app.extensions["medrobust"].config
    if config.api_token is None:
        return
    given = _bearer()
    if given is None and page:
        given = _basic_password()
    if _matches(given, config.api_token) or _matches(given, config.admin_token):
        return
    if page:
        what = "no token" if given is None else "a token that does not match"
        raise ApiError(
            "unauthorized",
            f"expected the API token (MEDROBUST_API_TOKEN) as 'Authorization: Bearer <token>' or as the password "
            f"the browser asks for, got {what}",
            401, headers=_PAGE_CHALLENGE,
        )
    what = "no bearer token" if given is None else "a token that does not match"
    raise ApiError("unauthorized", f"expected 'Authorization: Bearer <MEDROBUST_API_TOKEN>', got {what}", 401, headers=_CHALLENGE)


def check_admin_token() -> None:
    """Raise 403 if admin actions are disabled (no MEDROBUST_ADMIN_TOKEN), 401 unless the bearer token is it."""
    config = current_app.extensions["medrobust"].config
    if config.admin_token is None:
        raise ApiError(
            "admin_disabled",
            "admin actions are disabled: set MEDROBUST_ADMIN_TOKEN on the server and send it as a bearer token",
            403,
        )
    given = _bearer()
    if not _matches(given, config.admin_token):
        what = "no bearer token" if given is None else "a token that does not match"
        raise ApiError("unauthorized", f"expected 'Authorization: Bearer <MEDROBUST_ADMIN_TOKEN>', got {what}", 401, headers=_CHALLENGE)


def require_token(view: F) -> F:
    """Decorator: the view needs the API token when one is configured."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        check_api_token()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def require_page_token(view: F) -> F:
    """Decorator: a page a browser opens needs the API token (bearer, or the Basic password) when one is configured."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        check_api_token(page=True)
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def require_admin(view: F) -> F:
    """Decorator: the view is an admin action and always needs MEDROBUST_ADMIN_TOKEN."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        check_admin_token()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
