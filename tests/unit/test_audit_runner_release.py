"""A store error before a run's own error handling must not leave its model reserved (409 forever)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from audit.runner import AuditRunner
from audit.store import AuditStore
from training.contract.config import AuditConfig

CARD = {"name": "demo-resnet50-baseline", "task": "demo", "class_names": ["a", "b"], "num_classes": 2}


class _Predictor:
    backend_name = "stub"

    def model_info(self, model):
        return SimpleNamespace(name=model, latest=1, versions=(1,), card=CARD)

    def model_card(self, model, version=None):
        return CARD


class _FlakyStore(AuditStore):
    """A real SQLite store whose first read of a run fails, as a dropped database connection does."""

    failures = 1

    def get_run(self, run_id):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        return super().get_run(run_id)


def test_the_model_is_released_when_the_store_fails_before_the_run_starts(tmp_path):
    store = _FlakyStore(f"sqlite:///{tmp_path / 'audits.sqlite'}")
    runner = AuditRunner(AuditConfig(dataset="synthetic:30"), _Predictor(), store)
    with pytest.raises(ConnectionError):
        runner.run("demo-resnet50-baseline")
    assert runner.active() == {}  # not reserved: the next request is not a 409
    # The next start is accepted (its row is recorded), rather than refused as already running.
    assert runner.start("demo-resnet50-baseline") > 0
