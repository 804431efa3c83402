"""A lucky seed cannot carry a pick (alignlab.analysis.replicates), by simulation (numpy only).

Under the null every configuration of every method is drawn alike, and seed noise dominates (seed sd
0.4 on the gold score against per-sample sd 0.8 over 100 reporting prompts: 96% of a model's
variance). DPO has one configuration, LN-DPO six. Picked on the selection half but reported on the
same seeds, LN-DPO's best was the luckiest of six draws on every prompt: "best LN-DPO ≥ DPO" was
significant (p < 5%, value above 0) in 8.9% of the report's tests and the mirror claim in 0.2% (3,000
sweeps, 4 seeds; nominal 2.5% each); by the Welch test below, 5.2% and 0.4% (these 1,000 sweeps).
Ranked on some seeds and reported on the others, each side is one honest draw.

The picks are tested here with Welch's t on the picked configurations' per-seed reporting-half means
(one value per reporting seed): a test worked out apart from the report's bootstrap, so that what is
checked is the pick, not the interval machinery. The report's own test on the same picks is the
second test below.
"""

import numpy as np
import pytest
from scipy import stats

from alignlab.analysis import SweepEvidence, best_run, hitchhiker_claims
from simulated_sweeps import simulate_sweep

N_RESAMPLES = 300  # per simulated report; the p-values' Monte-Carlo error is far below the tolerance
SWEEPS = 1000
# Each one-sided rate at most 2.5% + 2 Monte-Carlo se: √(0.025 · 0.975 / 1000) = 0.49%.
BOUND = 0.025 + 2 * np.sqrt(0.025 * 0.975 / SWEEPS)


def null_sweeps(seeds: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(SWEEPS):
        runs, sft = simulate_sweep(rng, {"dpo": 1, "ln-dpo": 6}, seeds=seeds, n_prompts=200, seed_sd=0.4,
                                   sample_sd=0.8)
        yield SweepEvidence(runs, sft, N_RESAMPLES, seed=i)


def one_sided_rates(p_and_sign) -> tuple[float, float]:
    """Shares of sweeps significant (p < 5%) with the difference above 0, and below 0."""
    outcomes = list(p_and_sign)
    above = sum(p < 0.05 and d > 0 for p, d in outcomes) / len(outcomes)
    below = sum(p < 0.05 and d < 0 for p, d in outcomes) / len(outcomes)
    return above, below


def welch(ev: SweepEvidence) -> tuple[float, float]:
    """Welch's p-value and the difference of the best LN-DPO and the best DPO as the report picks them."""
    ln_dpo, dpo = (ev.reported(ev.picked(best_run(ev.by_method[m]))).mean(axis=1) for m in ("ln-dpo", "dpo"))
    return stats.ttest_ind(ln_dpo, dpo, equal_var=False).pvalue, ln_dpo.mean() - dpo.mean()


def test_a_larger_grid_gains_nothing_from_lucky_seeds():
    # Four seeds: LN-DPO's best is ranked on seeds 0 and 2 and reported on 1 and 3; DPO, with one
    # configuration, picks nothing and reports all four. Measured here: 2.2% above, 1.8% below.
    above, below = one_sided_rates(welch(ev) for ev in null_sweeps(seeds=4, seed=29))
    assert above <= BOUND and below <= BOUND, (above, below)


@pytest.mark.slow
def test_the_reports_own_test_of_a_pick_holds_its_level():
    # The same sweeps through the claim code. Each pick is reported on 2 seeds, so the statistic gets
    # 1 degree of freedom (alignlab.evidence.bootstrap: a 2-seed configuration's variance is one
    # squared difference); with Welch–Satterthwaite's df it was 3.65% above and 3.3% below (2,000
    # sweeps). Measured here: 0.0% and 0.0%: conservative, as t at 1 df is (a pick is reported on 3
    # seeds, with Welch–Satterthwaite's df, from 6 seeds on).
    def claim(ev):
        c = next(c for c in hitchhiker_claims(ev) if c["claim"] == "best score: LN-DPO ≥ DPO")
        return c["p_value"], c["value"]
    above, below = one_sided_rates(claim(ev) for ev in null_sweeps(seeds=4, seed=29))
    assert above <= BOUND and below <= BOUND, (above, below)
