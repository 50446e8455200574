"""CI lints and type-checks before it tests, with the configuration in pyproject.toml: ruff fails on a
finding, mypy is strict on the contract and lenient elsewhere, and .ci/run runs both, then the
README's test command."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from tests.project import PROJECT

PYPROJECT = PROJECT / "pyproject.toml"


def _run(*command: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def test_ci_lints_and_type_checks_before_the_readmes_test_command():
    steps = [line.strip() for line in (PROJECT / ".ci" / "run").read_text().splitlines()]
    readme = (PROJECT / "README.md").read_text()
    (test_command,) = re.findall(r"then runs every tier with `([^`]+)`", readme)
    assert steps.index("ruff check .") < steps.index("mypy") < steps.index(test_command)


def test_ruff_and_mypy_are_pinned_in_the_test_extra():
    test_extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]
    pinned = {name for name, _ in (spec.split("==") for spec in test_extra if "==" in spec)}
    assert {"ruff", "mypy"} <= pinned


def test_ruff_with_the_projects_configuration_fails_on_a_finding(tmp_path):
    (tmp_path / "bad.py").write_text("import os\n")  # F401: imported, never used
    (tmp_path / "good.py").write_text('"""Nothing to find."""\n')
    found = _run("ruff", "check", "--no-cache", "--config", str(PYPROJECT), "bad.py", cwd=tmp_path)
    assert found.returncode == 1 and "F401" in found.stdout, found.stdout + found.stderr
    clean = _run("ruff", "check", "--no-cache", "--config", str(PYPROJECT), "good.py", cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_mypy_is_strict_on_the_contract_only(tmp_path):
    untyped = "def double(x):\n    return 2 * x\n"
    for package in ("training/contract", "service"):
        folder = tmp_path / package
        folder.mkdir(parents=True)
        (folder / "loose.py").write_text(untyped)
    for folder in ("training", "training/contract", "service"):
        (tmp_path / folder / "__init__.py").write_text("")
    checked = _run("mypy", "--config-file", str(PYPROJECT), "--no-incremental", "training", "service", cwd=tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert re.findall(r"^(\S+?):\d+: error: .*\[(\S+)\]$", checked.stdout, re.MULTILINE) == [
        ("training/contract/loose.py", "no-untyped-def")
    ], checked.stdout


@pytest.mark.slow  # the whole project through mypy: 15-20 s; .ci/run runs it anyway
def test_the_project_passes_ruff_and_mypy():
    linted = _run("ruff", "check", "--no-cache", ".", cwd=PROJECT)
    assert linted.returncode == 0, linted.stdout
    typed = _run("mypy", cwd=PROJECT)
    assert typed.returncode == 0, typed.stdout
