"""`alignlab bench`: throughput and memory against TRL and the SFT limit, as ratios."""

from alignlab.bench.runner import run_bench
from alignlab.bench.table import format_table

__all__ = ["format_table", "run_bench"]
