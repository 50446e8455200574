"""bench.audit_load: a short real run (TF Serving stand-in, front end, two workers) ending with one JSON line."""

from __future__ import annotations

import json
import os

import pytest

from bench import audit_load as bench


@pytest.mark.slow  # starts a front end and two workers four times over: a few minutes on 2 cores
def test_a_short_run_prints_every_phase_then_one_json_line_of_ratios(tiny_repo, capsys):
    affinity = os.sched_getaffinity(0)
    assert bench.main(["--model-repo", str(tiny_repo.path), "--requests", "5", "--samples", "8", "--steps", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    table = "\n".join(lines[:-1])
    own_replica = len(os.sched_getaffinity(0)) > 1
    for phase in ("idle", "audit", "audit+cap", "idle-after", *(["audit+own"] if own_replica else [])):
        assert f"\n{phase} " in f"\n{table}"
    result = json.loads(lines[-1])
    assert result["model"] == tiny_repo.baseline and result["workers"] == 2
    assert result["shared_goal_met"] == (result["capped_p99_over_idle"] <= 1.25)
    if own_replica:
        assert result["goal_met"] == (result["own_replica_p99_over_idle"] <= 1.25)
    else:
        assert result["goal_met"] is False  # not measured: never reported as met
    assert os.sched_getaffinity(0) == affinity  # the run gave this process its CPUs back
    assert all(result[k] > 0 for k in ("audit_p50_over_idle", "audit_p99_over_idle", "capped_p50_over_idle"))
