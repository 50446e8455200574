"""bench.audit_load: a short real run (TF Serving stand-in, front end, two workers) ending with one JSON line."""

from __future__ import annotations

import json

import pytest

from bench import audit_load as bench


@pytest.mark.slow  # starts a front end and two workers three times over: a few minutes on 2 cores
def test_a_short_run_prints_every_phase_then_one_json_line_of_ratios(tiny_repo, capsys):
    assert bench.main(["--model-repo", str(tiny_repo.path), "--requests", "5", "--samples", "8", "--steps", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    table = "\n".join(lines[:-1])
    for phase in ("idle", "audit", "audit+cap", "idle-after"):
        assert f"\n{phase} " in f"\n{table}"
    result = json.loads(lines[-1])
    assert result["model"] == tiny_repo.baseline and result["workers"] == 2
    assert result["goal_met"] == (result["capped_p99_over_idle"] <= 1.25)
    assert all(result[k] > 0 for k in ("audit_p50_over_idle", "audit_p99_over_idle", "capped_p50_over_idle"))
