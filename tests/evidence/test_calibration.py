"""The claim code's error rates, by simulation through the real code path (numpy only).

A sweep is simulated from a known truth (simulated_sweeps), written as the table `alignlab verdict`
reads (one row per response), and judged by `alignlab.verdict`: every claim a report makes (the
Hitchhiker claims, and VAR's gain when VAR runs), decided with Holm's correction within the primary
family and within the secondary one, exactly as alignlab.report.document does.
    null   every method from one distribution: any confirmed or reversed verdict is a false one, and
           in each family the rate of reports with at least one must stay at or below 5%
    power  one method better by 2 noise floors (the seed sd of a model's mean gold score), 3 seeds:
           the report must confirm its expected score over the other in at least 80% of sweeps
"""

import numpy as np
import pytest

from alignlab import verdict
from simulated_sweeps import as_table, families, noise_floor, simulate_sweep

N_RESAMPLES = 300  # per simulated report; the p-values' Monte-Carlo error is far below the tolerances


def report_claims(runs, sft, seed: int) -> list[dict]:
    return verdict(as_table(runs, sft, families()), n_resamples=N_RESAMPLES, seed=seed)


def false_verdict_rate(grid: dict, sweeps: int, seed: int, **noise) -> tuple[float, dict]:
    """The larger of the two families' rates of reports with a false verdict, and the false verdicts
    per claim."""
    rng = np.random.default_rng(seed)
    with_false, per_claim = {"primary": 0, "secondary": 0}, {}
    for i in range(sweeps):
        claims = report_claims(*simulate_sweep(rng, grid, **noise), seed=i)
        wrong = [c for c in claims if c["verdict"] in ("confirmed", "reversed")]
        for family in with_false:
            with_false[family] += any(c["family"] == family for c in wrong)
        for claim in wrong:
            per_claim[claim["claim"]] = per_claim.get(claim["claim"], 0) + 1
    return max(with_false.values()) / sweeps, per_claim


def test_family_wise_false_verdict_rate_under_the_null_is_at_most_5_percent():
    # The default grid's shape: four methods, two configurations each, three seeds, 200 test prompts.
    rate, per_claim = false_verdict_rate({"dpo": 2, "ln-dpo": 2, "simpo": 2, "var": 2}, sweeps=1000, seed=0)
    assert rate <= 0.05, (rate, per_claim)


@pytest.mark.slow
def test_false_verdict_rate_with_unequal_grids_is_at_most_5_percent():
    # A larger grid gives its best configuration more chances to be lucky on the selection half; judged
    # on the reporting half, the luck of the prompts is gone (the seeds' luck stays, and the seed-level
    # error counts it).
    rate, per_claim = false_verdict_rate({"dpo": 3, "ln-dpo": 6, "simpo": 9}, sweeps=1000, seed=1)
    assert rate <= 0.05, (rate, per_claim)


@pytest.mark.slow
def test_false_verdict_rate_when_training_noise_dominates_is_at_most_5_percent():
    # Seed sd 0.4 on the gold score (the default run's LN-DPO has a noise floor of 0.42) and noisier
    # responses: three seeds leave the seed level few degrees of freedom, where a normal or
    # percentile interval would be far too narrow.
    rate, per_claim = false_verdict_rate({"dpo": 2, "ln-dpo": 2, "simpo": 2, "var": 2}, sweeps=1000, seed=3,
                                         seed_sd=0.4, sample_sd=0.8)
    assert rate <= 0.05, (rate, per_claim)


def test_power_for_two_noise_floors_with_three_seeds_is_at_least_80_percent():
    # Four configurations per method: the expected-score claim pools every configuration's seeds. (With
    # the default grid's two configurations per method the same difference is confirmed about half as
    # often: the closing note of issue 15 gives the measured rate.)
    rng = np.random.default_rng(2)
    shift = 2 * noise_floor(100)  # the reporting half holds 100 of the 200 prompts
    sweeps, confirmed = 300, 0
    for i in range(sweeps):
        runs, sft = simulate_sweep(rng, {"dpo": 4, "ln-dpo": 4, "simpo": 4}, shift={"ln-dpo": shift})
        claim = next(c for c in report_claims(runs, sft, seed=i) if c["claim"] == "expected score: LN-DPO ≥ DPO")
        confirmed += claim["verdict"] == "confirmed"
    assert confirmed / sweeps >= 0.8, confirmed / sweeps
