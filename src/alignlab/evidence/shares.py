"""Shares of a handful of items (configurations of a grid), and the comparison of two such shares.

A grid has a few configurations per method, so a share is a count out of a few: its interval is
Wilson's score interval (inside [0, 1], not degenerate at 0 or 1), and two shares are compared by
Fisher's exact test, conditional on the total count, which is exact for any number of items and
never reads "no variation" as evidence: when every item agrees (no item counted, or all of them)
the conditional distribution has one point and p = 1.

    compare_shares(k1, n1, k2, n2)
        value     k1/n1 − k2/n2
        ci        Newcombe's hybrid score interval (Newcombe 1998, method 10) from the two Wilson
                  intervals (l_i, u_i):  d − √((p1 − l1)² + (u2 − p2)²),  d + √((u1 − p1)² + (p2 − l2)²)
        p_value   two-sided as twice the smaller one-sided Fisher p-value (capped at 1), so that a
                  verdict at 5% on it is a one-sided test at 2.5% in the direction of the value
"""

from __future__ import annotations

import math

from scipy import stats

from alignlab.evidence.bootstrap import Estimate

WILSON_Z = 1.959964  # two-sided 95% normal quantile


def wilson_interval(count: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion count/n.

    centre = (p + z²/2n) / (1 + z²/n),  half = z/(1 + z²/n) · √(p(1 − p)/n + z²/4n²).
    Unlike p ± z√(p(1−p)/n) it stays inside [0, 1] and is not degenerate at p = 0 or 1,
    which matters for the handful of runs a method's grid has.
    """
    if n <= 0:
        raise ValueError("Wilson interval of zero trials")
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_shares(k1: int, n1: int, k2: int, n2: int) -> Estimate:
    """k1 of n1 against k2 of n2 (module docstring); se and df are not those of a t statistic here:
    se is the Newcombe interval's half-width over 1.96 and df is None."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"a share needs at least one item, got {n1} and {n2}")
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    greater = stats.fisher_exact(table, alternative="greater").pvalue
    less = stats.fisher_exact(table, alternative="less").pvalue
    p_value = min(1.0, 2 * min(float(greater), float(less)))
    return Estimate(difference, (high - low) / (2 * WILSON_Z), None, (low, high), p_value)
