"""The two-level bootstrap and its estimate (alignlab.evidence.bootstrap) against variances worked out
in closed form, a simulation under the null, and hand-derived gradients."""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from alignlab.evaluation.metrics import bootstrap_ci
from alignlab.evidence import Resampler, estimate
from alignlab.evidence.bootstrap import combine, resample_counts


def test_resample_counts_draw_the_resamples_bootstrap_ci_draws():
    values = np.array([0.5, -1.0, 2.0, 3.5, 0.0, 7.0])
    counts = resample_counts(values.size, 500, seed=3)
    assert counts.shape == (500, values.size) and np.all(counts.sum(axis=1) == values.size)
    means = counts @ values / values.size
    low, high = bootstrap_ci(values, n_resamples=500, seed=3)
    assert (np.percentile(means, 2.5), np.percentile(means, 97.5)) == (pytest.approx(low), pytest.approx(high))


def test_resampler_rejects_too_few_or_mismatched_prompts():
    with pytest.raises(ValueError):
        Resampler(1)
    with pytest.raises(ValueError, match="prompts"):
        Resampler(5, 10).mean(np.zeros((2, 4)), "a")


def test_a_configuration_sharing_seeds_must_say_which_rows_are_which():
    """Configurations sharing seed values are drawn jointly; one asked for without its rows' seed values
    (or with values that are not its rows') would be drawn apart, understating the noise: refused."""
    resampler = Resampler(4, 10, seed_values={"a": [1, 2], "b": [1, 2], "c": [7, 8]})
    rows = np.zeros((2, 4))
    for seeds in (None, [1], [1, 3]):
        with pytest.raises(ValueError, match="a: its seed values .* shares with b"):
            resampler.mean(rows, "a", seeds=seeds)
    assert resampler.mean(rows, "a", seeds=[2, 1]).value == 0.0
    assert resampler.mean(rows, "c").value == 0.0  # seeds of its own: drawn alone, values not needed


# ------------------------------------------------------------------ (a) a fixed baseline, one family

def test_baseline_mean_with_a_mask_is_the_masked_mean_and_varies_as_var_over_n():
    rng = np.random.default_rng(0)
    P = 300
    x = rng.normal(0, 1, P) + np.where(np.arange(P) % 3 == 0, 5.0, 0.0)  # the other family is far off
    mask = np.arange(P) % 2 == 0                                            # 150 prompts
    q = Resampler(P, 4000, seed=1).mean(x, None, mask)
    assert q.value == pytest.approx(x[mask].mean())
    assert q.n_prompts == 150 and q.configs == {} and q.fewest_seeds is None
    # A fixed model has no seed level: its seeds-only resamples are all the value, and full = prompts-only.
    assert np.allclose(q.seeds, x[mask].mean()) and np.allclose(q.full, q.prompts)
    assert q.interaction_variance == 0
    # Resampling prompts varies a mean of 150 values as their variance / 150.
    assert np.var(q.prompts) == pytest.approx(np.var(x[mask]) / mask.sum(), rel=0.10)
    assert np.mean(q.prompts) == pytest.approx(x[mask].mean(), abs=4 * np.std(x[mask]) / np.sqrt(150 * 4000))


# ------------------------------------------------------------------ (b) a pure seed effect

@pytest.mark.parametrize("S", [3, 5])
def test_seeds_only_variance_of_a_pure_seed_effect_is_unbiased(S):
    rng = np.random.default_rng(S)
    P = 40
    seed_effect = rng.normal(0, 1, S)
    x = np.repeat(seed_effect[:, None], P, axis=1)                  # rows differ by constants only
    q = Resampler(P, 4000, seed=2).mean(x, "config")
    assert q.value == pytest.approx(seed_effect.mean())
    # Unbiased: var(mean of S seeds) = s²/S with the sample variance s² (ddof=1), not (S−1)/S of it.
    expected = np.var(seed_effect, ddof=1) / S
    assert np.var(q.seeds) == pytest.approx(expected, rel=0.10)
    assert np.var(q.prompts) == pytest.approx(0, abs=1e-20)           # no prompt varies anything
    assert q.interaction_variance == pytest.approx(0, abs=1e-20)      # additive: no seed × prompt residual
    assert q.configs == {"config": S}
    assert q.seed_units == [(pytest.approx(expected), S - 1, True)]   # the seeds' own s²/S
    e = estimate(q)
    # Welch–Satterthwaite with only the seed level: df = the seed df, and se its variance's root.
    assert e.df == pytest.approx(S - 1)
    assert e.se == pytest.approx(np.std(q.seeds, ddof=1))


def test_seed_and_prompt_levels_add_up_for_an_additive_matrix():
    rng = np.random.default_rng(7)
    S, P = 4, 200
    seed_effect, prompt_effect = rng.normal(0, 1, S), rng.normal(0, 2, P)
    x = seed_effect[:, None] + prompt_effect[None, :]
    q = Resampler(P, 4000, seed=3).mean(x, "c")
    assert np.var(q.seeds) == pytest.approx(np.var(seed_effect, ddof=1) / S, rel=0.10)
    assert np.var(q.prompts) == pytest.approx(np.var(prompt_effect) / P, rel=0.10)
    assert np.var(q.full) == pytest.approx(np.var(q.seeds) + np.var(q.prompts), rel=0.10)


def test_interaction_by_hand():
    # [[1, 2], [3, 6]]: column means 2, 4; row means 1.5, 4.5; grand mean 3; residuals ±0.5, Σe² = 1;
    # σ²_w = 1 / ((2 − 1)(2 − 1)) = 1, counted as σ²_w / (S·P) = 0.25.
    q = Resampler(2, 10).mean([[1.0, 2.0], [3.0, 6.0]], "c")
    assert q.interaction_variance == pytest.approx(0.25)
    assert q.value == pytest.approx(3.0)


def test_comparisons_are_paired_on_prompts():
    # Two configurations differing by a constant on every prompt: prompts cancel in their difference.
    rng = np.random.default_rng(4)
    S, P = 3, 50
    base = rng.normal(0, 1, (S, P))
    r = Resampler(P, 500, seed=0)
    d = combine(lambda a, b: a - b, r.mean(base + 0.5, "a"), r.mean(base, "b"))
    assert d.value == pytest.approx(0.5)
    assert np.allclose(d.prompts, 0.5)


# ------------------------------------------------------------------ (c) error rates under the null

def test_difference_under_the_null_has_5_percent_false_positives_and_95_percent_coverage():
    rng = np.random.default_rng(2024)
    S, P, n_sim = 3, 100, 400
    significant = covered = 0
    for i in range(n_sim):
        prompt = rng.normal(0, 0.4, P)                              # shared by both configurations

        def model():
            return prompt + rng.normal(0, 0.1, (S, 1)) + rng.normal(0, 0.3, (S, P))
        r = Resampler(P, 400, seed=i)
        e = estimate(combine(lambda a, b: a - b, r.mean(model(), "a"), r.mean(model(), "b")))
        significant += e.p_value < 0.05
        covered += e.ci[0] <= 0.0 <= e.ci[1]
    assert 0.02 <= significant / n_sim <= 0.08
    assert covered / n_sim >= 0.92


# ------------------------------------------------------------------ (d) the estimate

EQUAL_SEEDS = {"a": np.array([0.0, 1.0, 2.0]), "b": np.array([5.0, 6.0, 7.0])}  # two 3-seed configurations, s² = 1


def hand_built(value, seeds, prompts, n_prompts=50, seed_effects=None, interaction=None):
    """A quantity with hand-set resamples, on n_prompts prompts, of 3-seed configurations with the given
    seed effects (taken from a real mean, so that only the fields set here differ from what the module
    builds)."""
    seeds, prompts = np.asarray(seeds, float), np.asarray(prompts, float)
    q = Resampler(n_prompts, 2).mean(np.zeros((3, n_prompts)), "a")
    (leaf,) = q.gradient
    return dataclasses.replace(q, value=value, full=seeds + prompts - value, seeds=seeds, prompts=prompts,
                               seed_effects=EQUAL_SEEDS if seed_effects is None else seed_effects,
                               interaction={leaf: interaction or 0.0})


SEEDS = [0.8, 1.2, 1.0, 0.7, 1.3, 1.0]      # variance (ddof=1) 0.052
PROMPTS = [0.9, 1.1, 1.05, 0.95, 1.0, 1.0]  # variance (ddof=1) 0.005


def test_estimate_by_hand():
    e = estimate(hand_built(1.0, SEEDS, PROMPTS))
    v_s, v_p = 0.052, 0.005
    assert e.se == pytest.approx(np.sqrt(v_s + v_p))
    # Welch–Satterthwaite: (v_s + v_p)² / (v_s²/4 + v_p²/49): two configurations with equal seed variances
    # share v_s half and half, (v_s/2)²/2 + (v_s/2)²/2 = v_s²/4, as a pooled seed df (3 − 1) + (3 − 1) = 4.
    df = (v_s + v_p) ** 2 / (v_s ** 2 / 4 + v_p ** 2 / 49)
    assert e.df == pytest.approx(df)
    half = stats.t.ppf(0.975, df) * np.sqrt(v_s + v_p)
    assert e.ci == pytest.approx((1.0 - half, 1.0 + half))
    assert e.p_value == pytest.approx(2 * stats.t.sf(1.0 / np.sqrt(v_s + v_p), df))
    assert e.to_dict()["ci"] == list(e.ci)


def test_p_value_against_a_null_region_counts_from_its_edge():
    inside = estimate(hand_built(3.0, SEEDS, PROMPTS), null=(0.0, 7.16))
    assert inside.p_value == 1.0
    assert estimate(hand_built(0.0, SEEDS, PROMPTS)).p_value == 1.0          # on the point null
    assert estimate(hand_built(7.16, SEEDS, PROMPTS), null=(0.0, 7.16)).p_value == 1.0
    # Above the region: as far from its upper edge as 2.84 is from a point null at 0.
    above = estimate(hand_built(10.0, SEEDS, PROMPTS), null=(0.0, 7.16))
    assert above.p_value == pytest.approx(estimate(hand_built(2.84, SEEDS, PROMPTS)).p_value)
    below = estimate(hand_built(-1.0, SEEDS, PROMPTS), null=(0.0, 7.16))
    assert below.p_value == pytest.approx(estimate(hand_built(-1.0, SEEDS, PROMPTS)).p_value)
    assert below.p_value < 1.0


def test_no_significance_without_any_spread():
    # Every resample gives the value: no variance was measured, which is no evidence against the null.
    q = hand_built(1.0, [1.0] * 399, [1.0] * 399)
    assert estimate(q).se == 0 and estimate(q).without_spread
    assert estimate(q).p_value == 1.0
    assert estimate(hand_built(0.0, [0.0] * 399, [0.0] * 399)).p_value == 1.0
    assert not estimate(hand_built(1.0, SEEDS, PROMPTS)).without_spread


def test_interaction_is_not_counted_twice():
    q = hand_built(1.0, SEEDS, PROMPTS, interaction=0.004)
    assert q.interaction_variance == pytest.approx(0.004)
    assert estimate(q).se == pytest.approx(np.sqrt(0.052 + 0.005 - 0.004))
    # Never below the larger one-level variance, whatever the interaction estimate.
    assert estimate(hand_built(1.0, SEEDS, PROMPTS, interaction=1.0)).se == pytest.approx(np.sqrt(0.052))


# ------------------------------------------------------------------ (e) combine and its gradient

def two_configs():
    rng = np.random.default_rng(11)
    r = Resampler(30, 200, seed=5)
    qa = r.mean(2.0 + rng.normal(0, 1, (3, 30)), "a")
    qb = r.mean(4.0 + rng.normal(0, 1, (4, 30)), "b")
    return qa, qb


def test_difference_gradient_is_plus_and_minus_one():
    qa, qb = two_configs()
    assert qa.interaction_variance > 0 and qb.interaction_variance > 0
    d = combine(lambda a, b: a - b, qa, qb)
    assert d.value == pytest.approx(qa.value - qb.value)
    assert sorted(d.gradient.values()) == pytest.approx([-1.0, 1.0])
    assert d.interaction_variance == pytest.approx(qa.interaction_variance + qb.interaction_variance)
    assert d.configs == {"a": 3, "b": 4} and d.fewest_seeds == 3
    assert np.allclose(d.seed_effects["a"], qa.seed_effects["a"])
    assert np.allclose(d.seed_effects["b"], -qb.seed_effects["b"])
    for scheme in ("full", "seeds", "prompts"):
        assert np.allclose(getattr(d, scheme), getattr(qa, scheme) - getattr(qb, scheme))


def test_ratio_gradient_is_the_analytic_derivative():
    qa, qb = two_configs()
    a, b = qa.value, qb.value
    ratio = combine(lambda x, y: x / y, qa, qb)
    (leaf_a,), (leaf_b,) = qa.gradient, qb.gradient
    assert ratio.gradient[leaf_a] == pytest.approx(1 / b, rel=1e-4)
    assert ratio.gradient[leaf_b] == pytest.approx(-a / b ** 2, rel=1e-4)
    assert ratio.interaction_variance == pytest.approx(
        qa.interaction_variance / b ** 2 + qb.interaction_variance * a ** 2 / b ** 4, rel=1e-3)


def test_combined_quantity_counts_the_prompts_of_every_part():
    # Two families of 12 and 8 of 30 prompts: their average rests on 20 prompts, not on the larger 12.
    rng = np.random.default_rng(3)
    r = Resampler(30, 100, seed=0)
    x = rng.normal(0, 1, (2, 30))
    first, second = np.arange(30) < 12, (np.arange(30) >= 12) & (np.arange(30) < 20)
    qa, qb = r.mean(x, "a", first), r.mean(x, "a", second)
    assert (qa.n_prompts, qb.n_prompts) == (12, 8)
    assert combine(lambda a, b: (a + b) / 2, qa, qb).n_prompts == 20
    assert combine(lambda a, b: a - b, r.mean(x, "a", first), r.mean(x, "b", first)).n_prompts == 12


def test_chain_rule_through_nested_combines():
    qa, qb = two_configs()
    # (a − b) − (a − 2b) = b: a's gradient cancels, b's is −1 + 2 = 1.
    nested = combine(lambda x, y: x - y, combine(lambda x, y: x - y, qa, qb), combine(lambda x, y: x - 2 * y, qa, qb))
    (leaf_a,), (leaf_b,) = qa.gradient, qb.gradient
    assert nested.value == pytest.approx(qb.value)
    assert nested.gradient[leaf_a] == pytest.approx(0, abs=1e-4)
    assert nested.gradient[leaf_b] == pytest.approx(1, rel=1e-4)
    assert nested.interaction_variance == pytest.approx(qb.interaction_variance, rel=1e-3)


# ------------------------------------------------------------------ (f) Welch–Satterthwaite per configuration

def test_df_splits_the_seed_variance_by_each_configurations_own_share():
    # Seed effects [0, 1, 2] (s² = 1, v = 1/3) and [0, 3, 6] (s² = 9, v = 3): shares 0.1 and 0.9 of v_s,
    # so the seed term is (0.1·v_s)²/2 + (0.9·v_s)²/2, not v_s²/4 as pooling 2 + 2 df would give.
    unequal = {"a": np.array([0.0, 1.0, 2.0]), "b": np.array([0.0, 3.0, 6.0])}
    e = estimate(hand_built(1.0, SEEDS, PROMPTS, seed_effects=unequal))
    v_s, v_p = 0.052, 0.005
    assert e.se == pytest.approx(np.sqrt(v_s + v_p))
    assert e.df == pytest.approx((v_s + v_p) ** 2 / ((0.1 * v_s) ** 2 / 2 + (0.9 * v_s) ** 2 / 2 + v_p ** 2 / 49))
    # One configuration carrying all of it: its own S − 1 = 2 df at the seed level.
    alone = estimate(hand_built(1.0, SEEDS, PROMPTS, seed_effects={"a": np.zeros(3), "b": np.array([0.0, 3.0, 6.0])}))
    assert alone.df == pytest.approx((v_s + v_p) ** 2 / (v_s ** 2 / 2 + v_p ** 2 / 49))


def test_a_configuration_with_weight_zero_adds_no_degrees_of_freedom():
    # An expected best-of-2 style weighting (0 on a, 1 on b): a is named among the configurations but
    # carries nothing, so the estimate is b's own, df included.
    qa, qb = two_configs()
    weighted = combine(lambda a, b: 0.0 * a + 1.0 * b, qa, qb)
    assert weighted.configs == {"a": 3, "b": 4}
    assert (0.0, 2, False) in weighted.seed_units
    assert estimate(weighted).df == pytest.approx(estimate(qb).df)
    assert estimate(weighted).se == pytest.approx(estimate(qb).se)


def test_seed_effects_of_a_ratio_are_the_delta_methods():
    qa, qb = two_configs()
    a, b = qa.value, qb.value
    ratio = combine(lambda x, y: x / y, qa, qb)
    assert np.allclose(ratio.seed_effects["a"], qa.seed_effects["a"] / b, rtol=1e-4)
    assert np.allclose(ratio.seed_effects["b"], -a / b ** 2 * qb.seed_effects["b"], rtol=1e-4)


def test_a_quantity_that_moves_with_no_mean_smoothly_takes_the_fewest_seed_df():
    # An indicator (is a above b?) has gradient 0 everywhere: Welch–Satterthwaite's lower bound, the
    # smallest S − 1 of the configurations (a: 3 seeds → 2), stands for its seed level.
    rng = np.random.default_rng(5)
    r = Resampler(30, 400, seed=1)
    qa = r.mean(rng.normal(0, 1, (3, 30)), "a")
    qb = r.mean(qa.value + rng.normal(0, 1, (5, 30)) * 0.01, "b")
    above = combine(lambda x, y: (x > y) * 1.0, qa, qb)
    v_s, v_p = np.var(above.seeds, ddof=1), np.var(above.prompts, ddof=1)
    assert v_s > 0 and all(v == 0 for v, _, _ in above.seed_units)
    e = estimate(above)
    variance = max(v_s + v_p - above.interaction_variance, v_s, v_p)
    assert e.df == pytest.approx(max(1.0, variance ** 2 / (v_s ** 2 / 2 + v_p ** 2 / 29)))


def test_false_positives_stay_at_5_percent_when_one_configurations_seeds_dominate():
    # Seed sd 0.40 against 0.02 (20×), 3 seeds each: the difference's seed level has about 2 df, not the
    # 4 a pooled Σ(S − 1) gives. Under the null, P(|t_2| > t_4's 97.5% point, 2.78) ≈ 11%: with the pooled
    # df this test measured 9.1%. Tolerance: 2 Monte-Carlo se of a 5% rate over 1,000
    # simulations (0.7 points each). (Far in the tail Welch–Satterthwaite's estimated df still errs:
    # p < 0.5% in 0.9% of 3,000 simulations, as the noisy configuration's few seeds sometimes lie close
    # together, which shrinks its estimated share and raises the df.)
    rng = np.random.default_rng(29)
    S, P, n_sim = 3, 100, 1000
    rejected = 0
    for i in range(n_sim):
        prompt = rng.normal(0, 0.4, P)
        noisy = prompt + rng.normal(0, 0.40, (S, 1)) + rng.normal(0, 0.3, (S, P))
        quiet = prompt + rng.normal(0, 0.02, (S, 1)) + rng.normal(0, 0.3, (S, P))
        r = Resampler(P, 200, seed=i)
        rejected += estimate(combine(lambda a, b: a - b, r.mean(noisy, "noisy"), r.mean(quiet, "quiet"))).p_value < 0.05
    assert rejected / n_sim <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / n_sim)


# ------------------------------------------------------------------ (g) intervals of bounded quantities

def test_a_rate_near_0_gets_its_interval_on_the_logit_scale():
    # A tie share of 2% whose plain interval reaches below 0 (issue 29: "tie 2.0% [−0.6%, 4.6%]").
    q = hand_built(0.02, np.array(SEEDS) / 20, np.array(PROMPTS) / 20)
    plain, bounded = estimate(q), estimate(q, scale="logit")
    assert plain.ci[0] < 0
    t = stats.t.ppf(0.975, plain.df)
    half = t * plain.se / (0.02 * 0.98)            # the logit's derivative at 0.02: 1/(0.02·0.98)
    centre = np.log(0.02 / 0.98)
    expit = lambda z: 1 / (1 + np.exp(-z))        # noqa: E731
    assert bounded.ci == pytest.approx((expit(centre - half), expit(centre + half)))
    assert 0 < bounded.ci[0] < 0.02 < bounded.ci[1] < 1
    # The p-value and the rest stay on the rate's own scale.
    assert (bounded.p_value, bounded.se, bounded.df) == (plain.p_value, plain.se, plain.df)


def test_a_rate_of_exactly_0_or_1_gets_the_exact_one_sided_binomial_bound():
    # 0 of 50 prompts: Clopper–Pearson's upper 97.5% bound, 1 − 0.025^(1/50) = 0.0711.
    zero = estimate(hand_built(0.0, [0.0] * 10, [0.0] * 10, n_prompts=50), scale="logit")
    assert zero.ci == (0.0, pytest.approx(0.07117, abs=1e-4))
    one = estimate(hand_built(1.0, [1.0] * 10, [1.0] * 10, n_prompts=50), scale="logit")
    assert one.ci == (pytest.approx(1 - 0.07117, abs=1e-4), 1.0)


def test_kl_and_lengths_get_their_interval_on_the_log_scale():
    # KL 14.3 with a plain interval [−18.7, 47.4] (issue 29): half-width 33.05 = t·se; on the log scale
    # the same t·se/14.3 around log 14.3, i.e. 14.3 ÷ and × exp(33.05/14.3).
    q = hand_built(14.3, SEEDS, PROMPTS)
    plain = estimate(q)
    scale = 33.05 / (plain.ci[1] - plain.value)
    wide = hand_built(14.3, 14.3 + (np.array(SEEDS) - 14.3 / 14.3) * scale, 14.3 + (np.array(PROMPTS) - 1) * scale)
    e, e_log = estimate(wide), estimate(wide, scale="log")
    assert e.ci[0] < 0
    factor = np.exp((e.ci[1] - e.value) / 14.3)
    assert e_log.ci == pytest.approx((14.3 / factor, 14.3 * factor))
    assert estimate(hand_built(0.0, [0.0] * 10, [0.0] * 10), scale="log").ci == (0.0, 0.0)


def test_a_value_outside_the_scale_is_an_error():
    with pytest.raises(ValueError, match="logit"):
        estimate(hand_built(1.5, SEEDS, PROMPTS), scale="logit")
    with pytest.raises(ValueError, match="log-scale"):
        estimate(hand_built(-0.5, SEEDS, PROMPTS), scale="log")
    with pytest.raises(ValueError, match="scale must be"):
        estimate(hand_built(0.5, SEEDS, PROMPTS), scale="probit")
