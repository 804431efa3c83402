"""Generic statistics (alignlab.analysis.stats) against answers worked out by hand. The bootstrap,
Holm and verdicts are alignlab.evidence (tests/evidence)."""

import math

import numpy as np
import pytest

from alignlab.analysis.stats import logsumexp, wilson_interval


def test_wilson_interval_closed_form_and_edges():
    # 2 of 5 at z = 1.959964: published value [0.1176, 0.7693].
    low, high = wilson_interval(2, 5)
    assert low == pytest.approx(0.1176, abs=1e-4) and high == pytest.approx(0.7693, abs=1e-4)
    # 0 of n: [0, z²/(n + z²)]; n of n mirrors it.
    assert wilson_interval(0, 10) == (0.0, pytest.approx(3.841459 / 13.841459, abs=1e-6))
    assert wilson_interval(10, 10) == (pytest.approx(10 / 13.841459, abs=1e-6), pytest.approx(1.0))
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_logsumexp_matches_the_direct_sum_and_survives_summed_log_probs():
    a = np.array([[0.0, 1.0, 2.0], [-1.0, -1.0, -1.0]])
    assert np.allclose(logsumexp(a), np.log(np.exp(a).sum(axis=-1)))
    # exp(−1000) underflows to 0; shifted by the max, log(e^−1000 + e^−1000) = −1000 + log 2.
    assert logsumexp(np.array([-1000.0, -1000.0])) == pytest.approx(-1000 + math.log(2))
