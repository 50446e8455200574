"""The tiers: `python -m pytest` runs the quick one, `--all-tiers` (what .ci/run runs) every one."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.project import PROJECT, QUICK_TIER

SYSTEM_MODULE = "tests/integration/test_audit_worker_signals.py"  # two tests, both marked system
CONTAINER_MODULE = "tests/container/test_frontend.py"  # every test marked container


def _collect(*args: str, module: str = SYSTEM_MODULE) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "-n", "0", module, *args],
        cwd=PROJECT, capture_output=True, text=True, timeout=120, check=False,
    )
    return done.stdout


def test_the_quick_tier_is_pyprojects_default():
    addopts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert f"-m '{QUICK_TIER}'" in addopts
    assert "-n auto --dist loadscope" in addopts  # one worker per core: the quick tier's 5 minutes need both


def test_system_tests_run_only_with_all_tiers():
    assert "2 deselected" in _collect()
    everything = _collect("--all-tiers")
    assert "2 tests collected" in everything and "deselected" not in everything


def test_container_tests_run_only_with_all_tiers():
    quick = _collect(module=CONTAINER_MODULE)
    assert "no tests collected" in quick and "deselected" in quick, quick
    everything = _collect("--all-tiers", module=CONTAINER_MODULE)
    assert "tests collected" in everything and "deselected" not in everything, everything


def test_ci_runs_the_readmes_command_for_every_tier():
    command = (PROJECT / ".ci" / "run").read_text().rstrip().splitlines()[-1]
    assert command.startswith("python -m pytest --all-tiers")
    assert f"`{command}`" in (PROJECT / "README.md").read_text()


def test_the_longest_modules_listed_to_start_first_exist():
    from tests.conftest import LONGEST_FIRST

    missing = [module for module in LONGEST_FIRST if not (PROJECT / module).is_file()]
    assert not missing, f"LONGEST_FIRST names modules that are not there: {missing}"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)


def test_ci_keeps_the_collection_order_so_the_longest_modules_start_first():
    command = (PROJECT / ".ci" / "run").read_text().rstrip().splitlines()[-1]
    assert "--dist loadscope --no-loadscope-reorder" in command
