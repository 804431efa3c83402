"""The robustness analyses: pure functions of finished runs' per-sample results.

    runs         RunRecord and picking runs or configurations (best, percentile, top-k%)
    replicates   configurations with replicate seeds, the selection/reporting split, SweepEvidence
    claims       claim records and the report-wide Holm decision on them
    hitchhiker   the Hitchhiker claims, expected best-of-k curves, top-k% pools, sensitivity (SPEC §6 1–6)
    var          the VAR study's analyses (SPEC §6 items 7–9)
    stats        Wilson intervals, log-sum-exp
The statistics themselves (two-level bootstrap, Holm, expected max) are alignlab.evidence.
"""

from alignlab.analysis.claims import decide
from alignlab.analysis.hitchhiker import (expected_max_curve, hitchhiker_claims, sensitivity, top_k_pooled,
                                          variant_claims, varying_params)
from alignlab.analysis.replicates import Configuration, SweepEvidence, group_configurations
from alignlab.analysis.runs import (LABELS, RunRecord, best_run, best_runs, metric_value, percentile_run,
                                    top_k_runs)
from alignlab.analysis.stats import WILSON_Z, wilson_interval
from alignlab.analysis.var import (VAR_PAPER_GAIN_PCT, VAR_PAPER_SPEEDUP, convergence_race, reward_by_family,
                                   var_gain_claims, var_vs_dpo_descriptives, z_estimator_variance)

__all__ = [
    "decide", "expected_max_curve", "hitchhiker_claims", "sensitivity", "top_k_pooled", "variant_claims",
    "varying_params",
    "Configuration", "SweepEvidence", "group_configurations",
    "LABELS", "RunRecord", "best_run", "best_runs", "metric_value", "percentile_run", "top_k_runs",
    "WILSON_Z", "wilson_interval",
    "VAR_PAPER_GAIN_PCT", "VAR_PAPER_SPEEDUP", "convergence_race", "reward_by_family", "var_gain_claims",
    "var_vs_dpo_descriptives", "z_estimator_variance",
]
