"""The container image as the Dockerfile describes it: the shape every deploy file relies on
(stages, user, ports, entrypoint, build context).

hadolint's check of the same Dockerfile runs in tests/integration/test_deploy_image.py.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_multi_stage_build_with_a_slim_runtime() -> None:
    froms = [args for word, args in _instructions() if word == "FROM"]
    assert len(froms) >= 2, f"expected a builder and a runtime stage, got {froms}"
    args = dict(a.split("=", 1) for w, a in _instructions() if w == "ARG" and "=" in a)
    base = args.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), f"expected a slim Python 3.11 base, got {base!r}"
    assert froms[-1].startswith("${PYTHON_IMAGE}"), froms[-1]
    copies_from_builder = [a for w, a in _instructions() if w == "COPY" and a.startswith("--from=builder")]
    assert copies_from_builder, "the runtime stage must copy the built environment from the builder"


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [args for word, args in _instructions() if word == "USER"]
    assert users, "expected a USER instruction"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"expected a numeric non-root uid, got {users[-1]!r}"


def test_entrypoint_healthcheck_and_default_command() -> None:
    by_word = {word: args for word, args in _instructions()}
    assert json.loads(by_word["ENTRYPOINT"]) == ["medrobust"]
    command = json.loads(by_word["CMD"])
    assert command[0] == "serve" and "--port" in command and command[command.index("--port") + 1] == "8000"
    healthcheck = by_word["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "curl" not in healthcheck
    assert set(by_word["EXPOSE"].split()) == {"8000", "9101"}


def test_the_healthcheck_one_liner_is_valid_python() -> None:
    healthcheck = next(args for word, args in _instructions() if word == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<HEALTHCHECK>", "exec")


def test_every_package_reaches_the_build_context() -> None:
    """The image installs with `pip install .`: every package in pyproject.toml must be copied in
    and must not be excluded by .dockerignore."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copies = [args.split()[0] for word, args in _instructions() if word == "COPY" and not args.startswith("--")]
    ignore = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore must exclude everything by default"
    for package in packages:
        assert f"{package}/" in copies, f"Dockerfile does not COPY {package}/"
        assert f"!{package}/" in ignore, f".dockerignore does not re-include {package}/"
    assert copies[0] == "pyproject.toml", "copy pyproject.toml first, so the dependency layer caches"
    assert "!pyproject.toml" in ignore
