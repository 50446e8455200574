"""Reading `MEDROBUST_*` environment variables, once, at the process edge.

Flags win over the environment: each command's parser takes its defaults from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def env_str(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of `MEDROBUST_<NAME>`, or `default` when unset or empty."""
    value = (os.environ if environ is None else environ).get(f"MEDROBUST_{name}", "")
    return value if value != "" else default


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """An integer setting; a malformed value is an error naming the variable."""
    raw = env_str(name, None, environ)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"MEDROBUST_{name}: expected an integer, got {raw!r}") from None


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A float setting; a malformed value is an error naming the variable."""
    raw = env_str(name, None, environ)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"MEDROBUST_{name}: expected a number, got {raw!r}") from None
