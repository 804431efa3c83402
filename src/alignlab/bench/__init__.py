"""`alignlab bench`: throughput and memory against TRL and the SFT limit, as ratios."""

from alignlab.bench.runner import format_table, run_bench

__all__ = ["format_table", "run_bench"]
