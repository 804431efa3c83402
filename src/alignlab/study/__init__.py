"""A study: its configuration and inputs (`config`), the sweep over the grid with its run store
(`sweep`, `store`), and the VAR study's own stages (`var_stages`)."""

from alignlab.study.config import StudyConfig
from alignlab.study.sweep import run_sweep, write_sweep_report

__all__ = ["StudyConfig", "run_sweep", "write_sweep_report"]
