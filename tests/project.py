"""Where the project and the data beside it are, and the quick tier's marker expression.

Plain constants for the root conftest and for the tests that need them (import them from here,
not from a conftest).
"""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
QUICK_TIER = "not slow and not system and not container"  # pyproject's addopts; kept equal by test_architecture
