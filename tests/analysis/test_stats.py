"""Generic statistics (alignlab.analysis.stats) against answers worked out by hand."""

import math

import numpy as np
import pytest

from alignlab.analysis.stats import (claim_record, logsumexp, mean_with_ci, resample_counts, stratified_bootstrap_ci,
                                     verdict, wilson_interval)
from alignlab.evaluation.metrics import bootstrap_ci


@pytest.mark.parametrize("low, high, expected", [(0.1, 0.5, "confirmed"), (-0.5, -0.1, "reversed"),
                                                 (-0.1, 0.5, "not confirmed"), (0.0, 0.5, "not confirmed")])
def test_verdict(low, high, expected):
    assert verdict(low, high) == expected


def test_wilson_interval_closed_form_and_edges():
    # 2 of 5 at z = 1.959964: published value [0.1176, 0.7693].
    low, high = wilson_interval(2, 5)
    assert low == pytest.approx(0.1176, abs=1e-4) and high == pytest.approx(0.7693, abs=1e-4)
    # 0 of n: [0, z²/(n + z²)]; n of n mirrors it.
    assert wilson_interval(0, 10) == (0.0, pytest.approx(3.841459 / 13.841459, abs=1e-6))
    assert wilson_interval(10, 10) == (pytest.approx(10 / 13.841459, abs=1e-6), pytest.approx(1.0))
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_resample_counts_draw_the_resamples_bootstrap_ci_draws():
    values = np.array([0.5, -1.0, 2.0, 3.5, 0.0, 7.0])
    counts = resample_counts(values.size, 500, seed=3)
    assert counts.shape == (500, values.size) and np.all(counts.sum(axis=1) == values.size)
    means = counts @ values / values.size
    low, high = bootstrap_ci(values, n_resamples=500, seed=3)
    assert (np.percentile(means, 2.5), np.percentile(means, 97.5)) == (pytest.approx(low), pytest.approx(high))


def test_mean_with_ci_is_the_mean_and_bootstrap_ci():
    values = [1.0, 2.0, 4.0, 9.0]
    out = mean_with_ci(values, seed=1)
    low, high = bootstrap_ci(values, n_resamples=2000, seed=1)
    assert out == {"mean": 4.0, "ci_low": low, "ci_high": high}


def test_logsumexp_matches_the_direct_sum_and_survives_summed_log_probs():
    a = np.array([[0.0, 1.0, 2.0], [-1.0, -1.0, -1.0]])
    assert np.allclose(logsumexp(a), np.log(np.exp(a).sum(axis=-1)))
    # exp(−1000) underflows to 0; shifted by the max, log(e^−1000 + e^−1000) = −1000 + log 2.
    assert logsumexp(np.array([-1000.0, -1000.0])) == pytest.approx(-1000 + math.log(2))


def test_stratified_bootstrap_ci_resamples_each_group_on_its_own():
    # Constant groups: every resample gives the same difference of means.
    assert stratified_bootstrap_ci([[3.0] * 4, [1.0] * 7], lambda x, y: x.mean() - y.mean()) == (2.0, 2.0)
    low, high = stratified_bootstrap_ci([[0.0, 1.0, 2.0, 3.0], [10.0] * 3], lambda x, y: y.mean() - x.mean(),
                                        n_resamples=500, seed=0)
    assert 7.0 <= low < 8.5 < high <= 10.0


def test_claim_record_with_and_without_a_value():
    tested = claim_record("c", "s", 4, "d", np.float64(0.5), (0.1, 0.9))
    assert tested == {"claim": "c", "statistic": "s", "value": 0.5, "ci_low": 0.1, "ci_high": 0.9,
                      "verdict": "confirmed", "n_runs": 4, "detail": "d"}
    assert type(tested["value"]) is float
    untested = claim_record("c", "s", 0, "no DPO runs in the sweep")
    assert (untested["value"], untested["ci_low"], untested["ci_high"], untested["verdict"]) == (
        None, None, None, "not tested")
