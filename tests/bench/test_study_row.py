"""The bench's study rows: runs per minute from the measured seconds, and the ratio of the study's
rate to the separate commands' rate (numbers worked out by hand)."""

from pathlib import Path

from alignlab.bench import runner
from alignlab.bench.table import format_table


def test_study_rows_are_runs_per_minute_and_their_ratio(monkeypatch):
    measured = {"study_runs": 6, "study_seconds": 90.0, "sequential_runs": 3, "sequential_seconds": 120.0,
                "workers": 2}
    monkeypatch.setattr("alignlab.bench.study.measure_study_vs_sequential", lambda workdir: dict(measured))
    results = {"ratios": {}, "absolute": {}, "batch_size": 16}
    runner.measure_study_rows(Path("unused"), results, progress=lambda line: None)
    # 6 runs in 1.5 min = 4 runs/min; 3 runs in 2 min = 1.5 runs/min; 4 / 1.5 = 2.667
    assert results["absolute"]["study_runs_per_minute"] == 4.0
    assert abs(results["ratios"]["study_vs_sequential"] - 8 / 3) < 1e-12
    table = format_table(results)
    assert "study_vs_sequential" in table and "2.67  >= 2.0   yes" in table
    assert "study_runs_per_minute 4.00" in table and "6 runs in 90.0 s (2 workers)" in table
