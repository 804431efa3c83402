"""Fieller's interval for a ratio (alignlab.evidence.ratio) against hand-worked numbers and by
simulation with a known ratio."""

import math

import numpy as np
import pytest
from scipy import stats

from alignlab.evidence import Resampler
from alignlab.evidence.bootstrap import combine, estimate
from alignlab.evidence.ratio import fieller, ratio_interval, ratio_variances


def test_bounded_interval_by_hand():
    # N = 2, D = 1, v_N = 0.04, v_D = 0.01, c = 0.005, t = 2:
    # a = 1 − 4·0.01 = 0.96, b = 2 − 4·0.005 = 1.98, e = 4 − 4·0.04 = 3.84,
    # b² − a·e = 3.9204 − 3.6864 = 0.234, so θ ∈ (1.98 ± √0.234)/0.96 = [1.558609, 2.566391].
    f = fieller(2.0, 1.0, 0.04, 0.01, 0.005, 2.0)
    assert f.kind == "bounded" and f.ratio == 2.0
    assert (f.low, f.high) == pytest.approx((1.558609, 2.566391), abs=1e-6)
    # At each end the contrast N − θD is exactly t standard errors from 0.
    for theta in (f.low, f.high):
        assert abs(2.0 - theta) == pytest.approx(2.0 * math.sqrt(0.04 - 2 * theta * 0.005 + theta ** 2 * 0.01))
    assert f.contains(2.0) and not f.contains(1.5) and not f.contains(2.6)


def test_denominator_not_significant_gives_two_rays_or_the_whole_line():
    # N = 1, D = 0.1, v_N = 0.04, v_D = 0.01, c = 0, t = 2: D is 1 se from 0, so a = 0.01 − 0.04 < 0;
    # b = 0.1, e = 1 − 0.16 = 0.84, b² − a·e = 0.01 + 0.0252 = 0.0352: the set lies outside the roots
    # (0.1 ± 0.187617)/(−0.03) = −9.587 and 2.921.
    f = fieller(1.0, 0.1, 0.04, 0.01, 0.0, 2.0)
    assert f.kind == "exclusive" and not f.bounded
    assert (f.low, f.high) == pytest.approx((-9.58724, 2.92058), abs=1e-4)
    assert f.contains(10.0) and f.contains(-20.0) and not f.contains(0.0)
    assert f.to_dict()["ci"] == pytest.approx([f.low, f.high])
    # N = 0.1, D = 0: a = −0.04, b = 0, e = 0.01 − 0.16, b² − a·e = −0.006 < 0: every ratio fits.
    whole = fieller(0.1, 0.0, 0.04, 0.01, 0.0, 2.0)
    assert whole.kind == "unbounded" and whole.contains(1e9) and whole.to_dict()["ci"] is None
    assert math.isnan(whole.ratio)


@pytest.mark.parametrize("mean_denominator", [3.0, 1.0])
def test_coverage_of_the_true_ratio_in_a_normal_sample(mean_denominator):
    # n = 8 bivariate-normal pairs (sd 1 and 1.5, correlation 0.5), ratio of the means 2: with the
    # sample means, their estimated (co)variances and t at n − 1 df, Fieller's set covers the true
    # ratio in exactly 95% of samples (bounded or not). Denominator mean 3 is 5.7 se from 0: the set
    # is nearly always bounded; mean 1 is 1.9 se from 0, under t = 2.36: the set is unbounded in most
    # samples, and still covers no more than it should. 4000 samples: the
    # Monte-Carlo se of a 95% coverage is 0.34%, so 93% is 6 se below it.
    rng = np.random.default_rng(7)
    n, sims, ratio = 8, 4000, 2.0
    cov = np.array([[1.0, 0.75], [0.75, 2.25]])
    t = stats.t.ppf(0.975, n - 1)
    covered, bounded = 0, 0
    for _ in range(sims):
        x = rng.multivariate_normal([ratio * mean_denominator, mean_denominator], cov, size=n)
        s = np.cov(x.T) / n
        f = fieller(x[:, 0].mean(), x[:, 1].mean(), s[0, 0], s[1, 1], s[0, 1], t)
        covered += f.contains(ratio)
        bounded += f.bounded
    assert covered / sims >= 0.93, covered / sims
    assert covered / sims <= 0.97, covered / sims      # not covering by being useless
    assert bounded / sims > 0.99 if mean_denominator == 3.0 else 0.2 < bounded / sims < 0.5


def test_variances_from_the_resampling_and_the_interval_match_the_contrast_test():
    # Two configurations of 3 seeds on 40 shared prompts: the covariance by polarisation is positive
    # (shared prompts), and the interval's ends are where the contrast N − θD is t se from 0 with the
    # contrast's own estimate: the interval inverts the test.
    rng = np.random.default_rng(3)
    prompts = rng.normal(0, 1, 40)
    resampler = Resampler(40, n_resamples=2000, seed=1)
    n = resampler.mean(3.0 + prompts + rng.normal(0, 0.3, (3, 1)) + rng.normal(0, 0.5, (3, 40)), "n")
    d = resampler.mean(1.5 + prompts + rng.normal(0, 0.3, (3, 1)) + rng.normal(0, 0.5, (3, 40)), "d")
    v_n, v_d, c = ratio_variances(n, d)
    assert v_n == pytest.approx(estimate(n).se ** 2) and c > 0
    assert c == pytest.approx(np.cov(n.prompts, d.prompts)[0, 1] + np.cov(n.seeds, d.seeds)[0, 1], rel=0.5)
    f = ratio_interval(n, d, 2.0)
    assert f.bounded and f.low < n.value / d.value < f.high
    t = stats.t.ppf(0.975, estimate(combine(lambda x, y: x - 2.0 * y, n, d)).df)
    for theta in (f.low, f.high):
        contrast = n.value - theta * d.value
        assert abs(contrast) == pytest.approx(t * math.sqrt(v_n - 2 * theta * c + theta ** 2 * v_d), rel=1e-9)
