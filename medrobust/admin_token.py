"""The admin token `medrobust up` makes when MEDROBUST_ADMIN_TOKEN is not set: generated once, kept
in a file only its owner can read, and reused on every later start, so the token a person noted
yesterday still opens the admin actions today. A token the user set always wins and is never written."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_FILE = "admin-token"


@dataclass(frozen=True)
class KeptToken:
    """The admin token to serve with; `path` is where it is kept (None: the user's own, kept nowhere)."""

    token: str
    path: Path | None


def keep_admin_token(given: str | None, state_dir: Path) -> KeptToken:
    """The user's token when given, else the one kept in `state_dir` (made and written 0600 the first time)."""
    if given:
        return KeptToken(given, None)
    path = state_dir / TOKEN_FILE
    kept = _read(path)
    if kept:
        return KeptToken(kept, path)
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(18)
    try:
        # O_EXCL: of two `up` started at once, one writes and the other reads what it wrote.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        kept = _read(path)
        if kept:
            return KeptToken(kept, path)
        # An empty file (a crash between create and write): replace it.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # whatever the umask or an earlier file's mode
        out.write(token + "\n")
    log.info("admin token generated and kept in %s", path)
    return KeptToken(token, path)


def _read(path: Path) -> str:
    """The token in `path` ("" when there is none), its mode narrowed to 0600 if anyone else could read it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text().strip()
    except FileNotFoundError:
        return ""
    if text and mode & 0o077:
        log.warning("%s was readable by others (mode %o): narrowed to 0600", path, mode)
        path.chmod(0o600)
    return text
