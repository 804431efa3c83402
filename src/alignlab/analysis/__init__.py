"""The robustness analyses: pure functions of finished runs' per-sample results.

    runs         RunRecord and picking runs or configurations (best, percentile, top-k%)
    replicates   configurations with replicate seeds, the selection/reporting split, SweepEvidence
    claims       claim records, their families (primary, secondary), the Holm decision within each, and
                 what would settle an open claim (seeds or prompts for 80% power)
    report_claims  every claim of one report (`claims_of`): the study's report and `alignlab verdict` alike
    hitchhiker   the Hitchhiker claims, expected best-of-k curves, top-k% pools, sensitivity (SPEC §6 1–6)
    var          the VAR study's analyses (SPEC §6 items 7–9)
    stats        Wilson intervals, log-sum-exp
The statistics themselves (two-level bootstrap, Holm, expected max) are alignlab.evidence.
"""

from alignlab.analysis.claims import decide, seeds_for_power
from alignlab.analysis.hitchhiker import (expected_max_curve, hitchhiker_claims, sensitivity, top_k_pooled,
                                          variant_claims, varying_params)
from alignlab.analysis.replicates import Configuration, SweepEvidence, group_configurations
from alignlab.analysis.report_claims import DEFAULT_PRIMARY, claims_of
from alignlab.analysis.runs import (LABELS, RunRecord, best_run, best_runs, metric_value, percentile_run,
                                    top_k_runs)
from alignlab.analysis.stats import WILSON_Z, wilson_interval
from alignlab.analysis.var import (VAR_PAPER_GAIN_PCT, VAR_PAPER_SPEEDUP, convergence_race, reward_by_family,
                                   var_gain_claims, var_vs_dpo_descriptives, z_estimator_variance)

__all__ = [
    "decide", "seeds_for_power", "DEFAULT_PRIMARY", "claims_of", "expected_max_curve", "hitchhiker_claims", "sensitivity", "top_k_pooled", "variant_claims",
    "varying_params",
    "Configuration", "SweepEvidence", "group_configurations",
    "LABELS", "RunRecord", "best_run", "best_runs", "metric_value", "percentile_run", "top_k_runs",
    "WILSON_Z", "wilson_interval",
    "VAR_PAPER_GAIN_PCT", "VAR_PAPER_SPEEDUP", "convergence_race", "reward_by_family", "var_gain_claims",
    "var_vs_dpo_descriptives", "z_estimator_variance",
]
