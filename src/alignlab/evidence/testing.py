"""Error rates controlled across a report: Holm's step-down correction over every verdict of one
report (family-wise error rate 5%), and the verdicts.

    confirmed     adjusted p < 5% and the value lies above the null region (the claim holds)
    reversed      adjusted p < 5% and the value lies below it (the opposite holds)
    inconclusive  otherwise, or when the statistics cannot support a verdict (fewer than 2 seeds
                  per configuration: training noise unmeasured)
    not tested    the sweep lacks the runs or columns the claim needs
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.05
CORRECTION = "holm"
VERDICTS = ("confirmed", "reversed", "inconclusive", "not tested")


def holm(p_values) -> list[float]:
    """Holm-adjusted p-values: the i-th smallest of m becomes max_{j ≤ i} min(1, (m − j + 1)·p_(j))."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def verdict(value: float, p_adjusted: float, null: tuple[float, float] = (0.0, 0.0), alpha: float = ALPHA) -> str:
    """The verdict of a tested claim from its value and Holm-adjusted p-value."""
    if p_adjusted < alpha and value > null[1]:
        return "confirmed"
    if p_adjusted < alpha and value < null[0]:
        return "reversed"
    return "inconclusive"
