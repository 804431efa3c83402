"""A study: its configuration and inputs (`config`), its grid of runs (`grid`), the sweep over the
grid (`sweep`) with its executors (`executors`) and run store (`store`), the VAR study's own stages
(`var_stages`), and reading a finished sweep for the report (`results`)."""

from alignlab.study.config import StudyConfig
from alignlab.study.grid import GRID_PRESETS, RunSpec, expand_grid
from alignlab.study.results import load_run_record, write_sweep_report
from alignlab.study.store import RunStore
from alignlab.study.sweep import run_sweep

__all__ = ["StudyConfig", "GRID_PRESETS", "RunSpec", "expand_grid", "load_run_record", "write_sweep_report",
           "RunStore", "run_sweep"]
