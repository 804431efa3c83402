"""The bench's sweep row compares equal work: its study expands to one run per β, as many as the
independent side trains."""

from alignlab.bench.sweep import SWEEP_BETAS, sweep_study
from alignlab.study.config import StudyConfig
from alignlab.study.grid import expand_grid


def test_the_bench_sweep_trains_each_beta_once():
    study = sweep_study({"model": "m", "data": "d.jsonl"}, "t.jsonl", "gold", {"learning_rate": 1e-4})
    config = StudyConfig(out="x", grid_preset=None, **{key: study[key] for key in ("methods", "seeds", "grid")})
    runs = expand_grid(config, {"learning_rate": 1e-4, "epochs": 1})
    assert sorted(run.params["beta"] for run in runs) == SWEEP_BETAS
