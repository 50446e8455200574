"""bench.liveness at its smallest against the tiny repository: both probes in every phase, and the
master's answered throughout (the figure the liveness probe's timeout is sized from)."""

from __future__ import annotations

import pytest

from bench import liveness

pytestmark = pytest.mark.system  # gunicorn as a separate process


def test_a_small_run_probes_both_ports_in_every_phase(tiny_repo):
    result = liveness.run(tiny_repo.path, tiny_repo.baseline, uploads=4, upload_mb=1.0, slow_clients=4, slow_seconds=6.0)
    for phase in ("idle", "burst", "slow_clients"):
        assert result[phase]["api"]["probes"] > 0 and result[phase]["master"]["probes"] > 0
        assert result[phase]["master"]["unanswered"] == 0, result[phase]
    # Four slow clients hold all four of the worker's threads: the API port's probes wait behind them.
    assert result["slow_clients"]["api"]["unanswered"] + result["slow_clients"]["api"]["over_1s"] > 0, result
