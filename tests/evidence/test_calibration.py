"""The claim code's error rates, by simulation through the real code path (numpy only).

A sweep is simulated from a known truth (simulated_sweeps), written as the table `alignlab verdict`
reads (one row per response), and judged by `alignlab.verdict`: every claim a report makes (the
Hitchhiker claims, the other methods' claims, and VAR's when VAR runs), decided with Holm's correction
within the primary family and within the secondary one, exactly as alignlab.report.document does.
    null   every method's grid has the same mean: any confirmed or reversed verdict counts as a false
           one (also where the configurations a claim picks differ a little, by their jitter), and in
           each family the rate of reports with at least one must stay at or below 5% (+ 2 Monte-Carlo
           se: over 1,000 sweeps a 5% rate has se 0.69 points) in each of issue 29's scenarios:
             (a) seed sd per method as the study's noise floors (20× apart), configurations jittered
             (b) (a) with t₃ prompt effects and discrete gold with ties
             (c) (a) with 2 seeds          (d) (a) with unequal grids (1 vs 6 configurations)
             (e) (a) with seeds correlated ρ = 0.5 across methods and configurations, 4 configurations
                 per method, seed values shared (as a user's sweep of seeds 0, 1, 2 has them)
             (f) (a) with 60 prompts
             (g) (a) at `alignlab run`'s design: 4 configurations per method, 3 seeds, and seeds added
                 where the noise is (alignlab.analysis.sequential), up to 6
    power  one method better by 2 noise floors: the report must confirm its expected score over the
           other in at least 80% of sweeps; at `alignlab run`'s design, each default primary claim
"""

import numpy as np
import pytest

from alignlab import verdict
from alignlab.analysis import SweepEvidence
from alignlab.analysis.runs import method_label
from simulated_sweeps import NOISE_FLOORS, as_table, families, noise_floor, sequential_claims, simulate_sweep

N_RESAMPLES = 300  # per simulated report; the p-values' Monte-Carlo error is far below the tolerances
SWEEPS = 1000      # 2 Monte-Carlo se of a 5% rate: 1.4 points
BOUND = 0.05 + 2 * np.sqrt(0.05 * 0.95 / SWEEPS)
DEFAULT_GRID = {"dpo": 2, "ln-dpo": 2, "simpo": 2, "var": 2}
STUDY_GRID = {"dpo": 4, "ln-dpo": 4, "simpo": 4, "var": 4}  # `alignlab run`'s grid (study.grid, "small")
# Jitter sd 0.02: configurations truly differ (a pick can be right or wrong), by less than the seed
# noise of any method but VAR's, so that a best-of-grid claim's true difference stays near 0.
REAL_NOISE = {"seed_sd": NOISE_FLOORS, "jitter_sd": 0.02}


def report_claims(runs, sft, seed: int, n_prompts: int = 200) -> list[dict]:
    return verdict(as_table(runs, sft, families(n_prompts)), n_resamples=N_RESAMPLES, seed=seed)


def false_verdict_rate(grid: dict, sweeps: int, seed: int, max_seeds: int | None = None,
                       **noise) -> tuple[float, dict]:
    """The larger of the two families' rates of reports with a false verdict, and the false verdicts
    per claim; with max_seeds, of studies that add seeds by the sequential design up to it."""
    rng = np.random.default_rng(seed)
    with_false, per_claim = {"primary": 0, "secondary": 0}, {}
    first_seeds = noise.pop("seeds", 3) if max_seeds else None
    for i in range(sweeps):
        if max_seeds:
            claims, _ = sequential_claims(rng, grid, first_seeds, max_seeds, seed=i, n_resamples=N_RESAMPLES,
                                          **noise)
        else:
            claims = report_claims(*simulate_sweep(rng, grid, **noise), seed=i, n_prompts=noise.get("n_prompts", 200))
        wrong = [c for c in claims if c["verdict"] in ("confirmed", "reversed")]
        for family in with_false:
            with_false[family] += any(c["family"] == family for c in wrong)
        for claim in wrong:
            per_claim[claim["claim"]] = per_claim.get(claim["claim"], 0) + 1
    return max(with_false.values()) / sweeps, per_claim


@pytest.mark.slow
def test_family_wise_false_verdicts_with_equal_seed_noise():
    # Every method with the same seed sd (0.1): the layout the claim code was first checked on.
    rate, per_claim = false_verdict_rate(DEFAULT_GRID, SWEEPS, seed=0)
    assert rate <= BOUND, (rate, per_claim)


def test_family_wise_false_verdicts_with_seed_noise_20_times_apart_and_jittered_configurations():
    # (a) With the df pooled over every configuration a statistic touches: 10.2% ± 1.0 (these 1,000 sweeps).
    rate, per_claim = false_verdict_rate(DEFAULT_GRID, SWEEPS, seed=10, **REAL_NOISE)
    assert rate <= BOUND, (rate, per_claim)


@pytest.mark.slow
def test_family_wise_false_verdicts_with_heavy_tailed_prompts_and_tied_gold():
    # (b) Student t₃ prompt effects, gold on a grid of 0.5 (ties within and across models).
    rate, per_claim = false_verdict_rate(DEFAULT_GRID, SWEEPS, seed=11, prompt_df=3, gold_step=0.5, **REAL_NOISE)
    assert rate <= BOUND, (rate, per_claim)


@pytest.mark.slow
def test_family_wise_false_verdicts_with_two_seeds():
    # (c) One seed df per configuration.
    rate, per_claim = false_verdict_rate(DEFAULT_GRID, SWEEPS, seed=12, seeds=2, **REAL_NOISE)
    assert rate <= BOUND, (rate, per_claim)


@pytest.mark.slow
def test_family_wise_false_verdicts_with_unequal_grids():
    # (d) DPO and VAR with 1 configuration, LN-DPO and SimPO with 6: the larger grid gives its best
    # configuration more chances to be lucky in its seeds.
    grid = {"dpo": 1, "ln-dpo": 6, "simpo": 6, "var": 1}
    rate, per_claim = false_verdict_rate(grid, SWEEPS, seed=13, **REAL_NOISE)
    assert rate <= BOUND, (rate, per_claim)


@pytest.mark.slow
def test_family_wise_false_verdicts_with_seeds_correlated_across_methods():
    # (e) Seed s of every model shares half its seed variance, also within a method's grid, where a grid
    # mean averages correlated configurations: resampled apart, 7.2% ± 1.3 false primary verdicts at
    # 4 configurations (400 sweeps); drawn jointly by seed value (alignlab.evidence.bootstrap), 4.9% ± 0.7 (1,000).
    rate, per_claim = false_verdict_rate(STUDY_GRID, SWEEPS, seed=14, seed_correlation=0.5, **REAL_NOISE)
    assert rate <= BOUND, (rate, per_claim)


@pytest.mark.slow
def test_family_wise_false_verdicts_with_60_prompts():
    # (f) 60 prompts: 30 select, 30 report.
    rate, per_claim = false_verdict_rate(DEFAULT_GRID, SWEEPS, seed=15, n_prompts=60, **REAL_NOISE)
    assert rate <= BOUND, (rate, per_claim)


@pytest.mark.slow
def test_family_wise_false_verdicts_with_seeds_added_where_the_noise_is():
    # (g) `alignlab run`'s design: 4 configurations per method, 3 seeds, then the sequential looks add
    # seeds (up to 6) to the configurations whose noise keeps a primary claim open; every primary claim
    # is null here, so each study makes all 3 interim looks. 300 studies (each 4 analyses): 2 Monte-Carlo
    # se of a 5% rate are 2.5 points.
    sweeps = 300
    rate, per_claim = false_verdict_rate(STUDY_GRID, sweeps, seed=17, max_seeds=6, **REAL_NOISE)
    assert rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sweeps), (rate, per_claim)


def test_win_matrix_intervals_cover_the_true_share():
    # Two methods from one distribution (seed sd 0.4 and 0.02, continuous gold): by symmetry each wins
    # half of the (seed, seed, prompt) comparisons, so the true share is 1/2. Percentile intervals of the
    # two-level bootstrap covered it 78% of the time here (3 seeds); the t interval must cover ≥ 95%
    # less 2 Monte-Carlo se over 400 sweeps (2.2 points).
    rng = np.random.default_rng(16)
    sweeps, covered = 400, 0
    for i in range(sweeps):
        runs, sft = simulate_sweep(rng, {"dpo": 1, "simpo": 1}, seed_sd={"dpo": 0.4, "simpo": 0.02})
        ev = SweepEvidence(runs, sft, n_resamples=N_RESAMPLES, seed=i)
        m = ev.win_matrix({"DPO": ev.by_method["dpo"][0], "SimPO": ev.by_method["simpo"][0]})
        covered += m["ci_low"][0][1] <= 0.5 <= m["ci_high"][0][1]
    assert covered / sweeps >= 0.95 - 2 * np.sqrt(0.05 * 0.95 / sweeps), covered / sweeps


def power(grid: dict, shift: float, sweeps: int, seed: int, claim: str, **noise) -> float:
    rng = np.random.default_rng(seed)
    confirmed = 0
    for i in range(sweeps):
        runs, sft = simulate_sweep(rng, grid, shift={"ln-dpo": shift}, **noise)
        decided = next(c for c in report_claims(runs, sft, seed=i) if c["claim"] == claim)
        confirmed += decided["verdict"] == "confirmed"
    return confirmed / sweeps


EXPECTED = f"expected score: {method_label('ln-dpo')} ≥ {method_label('dpo')}"


def test_power_for_two_noise_floors_with_three_seeds_and_four_configurations_is_at_least_80_percent():
    # Equal seed sd (0.1) and four configurations per method: the expected-score claim pools every
    # configuration's seeds. Measured here: 87% (95% with the df pooled over every configuration, which
    # did not hold the error rate); the default grid's two configurations per method: 30%.
    shift = 2 * noise_floor(100)  # the reporting half holds 100 of the 200 prompts
    rate = power({"dpo": 4, "ln-dpo": 4, "simpo": 4}, shift, sweeps=300, seed=2, claim=EXPECTED)
    assert rate >= 0.8, rate


# Each default primary claim (alignlab.analysis.report_claims.DEFAULT_PRIMARY), the method it favours
# and the method it is compared with.
PRIMARY_CLAIMS = [("ln-dpo", "dpo", "expected score: LN-DPO ≥ DPO"),
                  ("simpo", "ln-dpo", "expected score: SimPO ≥ LN-DPO"),
                  ("var", "dpo", "expected score: VAR ≥ DPO")]


@pytest.mark.slow
@pytest.mark.parametrize("better, other, claim", PRIMARY_CLAIMS)
def test_power_of_each_primary_claim_at_two_noise_floors_at_the_run_design_is_at_least_80_percent(better, other,
                                                                                                  claim):
    # `alignlab run`'s design (4 configurations per method, 3 seeds, up to 6 where the noise is) with
    # the study's noise floors; the favoured method better by 2 noise floors of the noisier of the two
    # (one model's seed sd of its mean gold on the 100 reporting prompts). The other two primary claims
    # are null or reversed, so their looks go on to 6 seeds. Measured (100 studies each): 100%, 100%, and
    # VAR ≥ DPO at 0.46: see the closing note of issue 29. 100 studies: 2 se of an 80% rate are 8 points,
    # and the claims are far above it.
    shift = 2 * max(noise_floor(100, NOISE_FLOORS[m]) for m in (better, other))
    rng = np.random.default_rng(20)
    confirmed = 0
    sweeps = 100
    for i in range(sweeps):
        claims, _ = sequential_claims(rng, STUDY_GRID, 3, 6, seed=i, n_resamples=N_RESAMPLES, shift={better: shift},
                                      **REAL_NOISE)
        confirmed += next(c for c in claims if c["claim"] == claim)["verdict"] == "confirmed"
    assert confirmed / sweeps >= 0.8, confirmed / sweeps
