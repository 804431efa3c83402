"""Expected best-of-k (Dodge et al. 2019, "Show Your Work"): what a search of k configurations
drawn at random from a grid of n, without replacement, is expected to give.

With the n configurations ranked 1..n by the score that picks (the selection half, on each
configuration's ranking seeds: alignlab.analysis.replicates), the pick of a
random k-subset is its top-ranked member, and configuration i is that member with probability

    P(i is picked) = C(i − 1, k − 1) / C(n, k)        (the other k − 1 come from the i − 1 below it)

so the expected reported score of a budget-k search is Σ_i P(i is picked) · reported_i: exact, a
weighted sum of the configurations' reported scores (on data the ranking never saw). k = 1 is the
grid mean; k = n the best.
"""

from __future__ import annotations

from math import comb

import numpy as np


def expected_max_weights(n: int, k: int) -> np.ndarray:
    """[n] probabilities that the configuration of rank i (1 = worst … n = best) is a k-search's pick."""
    if not 1 <= k <= n:
        raise ValueError(f"a search budget k must be in [1, {n}], got {k}")
    total = comb(n, k)
    return np.array([comb(i - 1, k - 1) / total for i in range(1, n + 1)], dtype=np.float64)
