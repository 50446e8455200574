"""bench.dicom_decode runs at its smallest and prints its table and one JSON line of every case."""

from __future__ import annotations

import json

from bench import dicom_decode as bench


def test_a_small_run_prints_every_case_side_by_side(capsys):
    bench.main(["--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result["cases"]) == {name for name, _ in bench._cases()}
    for row in result["cases"].values():
        assert row["in_process_ms"] > 0 and row["confined_ms"] > 0
        assert row["ratio"] > 0
    assert any("in-process ms" in line and "confined ms" in line for line in lines)
