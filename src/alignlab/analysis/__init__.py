"""The robustness analyses: pure functions of finished runs' per-sample results.

    stats        generic statistics: Wilson intervals, bootstrap resamples, verdicts, claim records
    runs         RunRecord, selecting runs (best, percentile, top-k%) and per-prompt comparisons
    hitchhiker   grid-level statistics and the Hitchhiker claims (SPEC §6 items 1–6)
    var          the VAR study's analyses (SPEC §6 items 7–9)
"""

from alignlab.analysis.hitchhiker import (expected_performance, fraction_worse, hitchhiker_claims, sensitivity,
                                          top_k_distributions, varying_params)
from alignlab.analysis.runs import (LABELS, RunRecord, best_run, best_runs, metric_value, paired_difference,
                                    percentile_run, top_k_runs, win_matrix)
from alignlab.analysis.stats import N_RESAMPLES, WILSON_Z, verdict, wilson_interval
from alignlab.analysis.var import (VAR_PAPER_GAIN_PCT, VAR_PAPER_SPEEDUP, convergence_race, reward_by_family,
                                   var_vs_dpo_claim, z_estimator_variance)

__all__ = [
    "N_RESAMPLES", "WILSON_Z", "verdict", "wilson_interval",
    "LABELS", "RunRecord", "best_run", "best_runs", "metric_value", "paired_difference", "percentile_run",
    "top_k_runs", "win_matrix",
    "expected_performance", "fraction_worse", "hitchhiker_claims", "sensitivity", "top_k_distributions",
    "varying_params",
    "VAR_PAPER_GAIN_PCT", "VAR_PAPER_SPEEDUP", "convergence_race", "reward_by_family", "var_vs_dpo_claim",
    "z_estimator_variance",
]
