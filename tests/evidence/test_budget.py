"""Expected best-of-k weights (alignlab.evidence.budget) against brute force: every k-subset of a grid
of n configurations ranked 0 (worst) … n − 1 (best), and how often each rank is the subset's best."""

from itertools import combinations
from math import comb

import numpy as np
import pytest

from alignlab.evidence import expected_max_weights


def brute_force(n, k):
    counts = np.zeros(n)
    for subset in combinations(range(n), k):
        counts[max(subset)] += 1
    return counts / counts.sum()


@pytest.mark.parametrize("n, k", [(n, k) for n in range(1, 9) for k in range(1, n + 1)])
def test_weights_are_the_frequency_of_each_rank_being_the_best_of_a_subset(n, k):
    w = expected_max_weights(n, k)
    assert w.shape == (n,)
    assert np.allclose(w, brute_force(n, k), rtol=0, atol=1e-12)
    assert w.sum() == pytest.approx(1.0)


def test_small_case_by_hand():
    # n = 4, k = 2: the 6 pairs have their best at rank 1 once ({0,1}), rank 2 twice, rank 3 three times.
    assert np.allclose(expected_max_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6])


@pytest.mark.parametrize("n", [1, 2, 5, 30])
def test_budget_one_is_the_grid_mean_and_full_budget_the_best(n):
    assert np.allclose(expected_max_weights(n, 1), np.full(n, 1 / n))
    assert np.array_equal(expected_max_weights(n, n), np.eye(n)[-1])


def test_large_grid_sums_to_one():
    # C(60, 30) is beyond float-exact integers: the weights must still form a distribution.
    w = expected_max_weights(60, 30)
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    assert w[-1] == pytest.approx(30 / 60)  # the best is in a random half with probability k/n
    assert w[28] == 0 and w[29] == pytest.approx(1 / comb(60, 30))


@pytest.mark.parametrize("n, k", [(3, 0), (3, 4), (3, -1), (0, 0), (1, 2)])
def test_invalid_budget_is_an_error(n, k):
    with pytest.raises(ValueError):
        expected_max_weights(n, k)
