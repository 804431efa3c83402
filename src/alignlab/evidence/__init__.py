"""The statistics behind every verdict (issue 15; SPEC §6, "Statistics of every claim").

    split      the test prompts split once into a selection half (to pick runs) and a reporting half
               (alignlab.analysis.replicates splits each configuration's seeds alike)
    bootstrap  the two-level bootstrap (seeds, then prompts) of configuration means, and estimates:
               value, standard error, degrees of freedom, 95% CI and p-value from one resampling
    testing    Holm's step-down correction and the verdicts confirmed / reversed / inconclusive / not tested
    budget     expected best-of-k over a grid (Dodge et al. 2019, "Show Your Work")
    ratio      ratios of estimates: Fieller's interval, from the contrast the claim tests
    shares     shares of configurations: Wilson intervals, Fisher's exact comparison, Newcombe's interval

Pure numpy (and scipy's Student t): no runs, methods, files or plots; alignlab.analysis builds the
claims from these pieces.
"""

from alignlab.evidence.bootstrap import N_RESAMPLES, Estimate, Resampled, Resampler, estimate
from alignlab.evidence.budget import expected_max_weights
from alignlab.evidence.split import PromptSplit, split_prompts
from alignlab.evidence.testing import ALPHA, CORRECTION, VERDICTS, holm, verdict

__all__ = ["N_RESAMPLES", "Estimate", "Resampled", "Resampler", "estimate", "expected_max_weights",
           "PromptSplit", "split_prompts", "ALPHA", "CORRECTION", "VERDICTS", "holm", "verdict"]
