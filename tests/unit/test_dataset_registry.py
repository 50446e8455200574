"""The dataset registry: each kind names a reader that exists, imported only when its kind is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.datasets import READERS

REPO = Path(__file__).resolve().parents[2]
READER_MODULES = sorted({reader.target.partition(":")[0] for reader in READERS.values()})


@pytest.mark.parametrize("kind", list(READERS))
def test_every_kind_resolves_to_a_reader(kind):
    assert callable(READERS[kind].resolve())


def _imported_after(statement: str) -> set[str]:
    # A fresh interpreter: this test process has long since imported every reader.
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_importing_datasets_imports_no_reader():
    assert _imported_after("import training.datasets") & set(READER_MODULES) == set()


def test_readers_do_not_import_datasets_back():
    assert "training.datasets" not in _imported_after("; ".join(f"import {m}" for m in READER_MODULES))
