"""Holm's correction and the verdicts (alignlab.evidence.testing) against hand-worked examples."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.evidence import ALPHA, VERDICTS, holm, verdict


def test_holm_by_hand():
    # sorted: 0.005 ×4 = 0.02, 0.01 ×3 = 0.03, 0.03 ×2 = 0.06, 0.04 ×1 = 0.04 → running max 0.06;
    # back in the original order.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_handles_ties_and_single_values():
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])          # 2·0.6 = 1.2 → 1, then max(1, 0.7)
    assert holm([0.4, 0.45]) == pytest.approx([0.8, 0.8])         # 0.8, then max(0.8, 0.45)
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])      # ties get the same adjusted value
    assert holm([0.03]) == pytest.approx([0.03])                  # one test: no correction
    assert holm([]) == []


def brute_holm(p):
    """Holm by its definition, one p-value at a time."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_properties(p):
    adjusted = holm(p)
    assert adjusted == pytest.approx(brute_holm(p))
    assert all(a >= q - 1e-15 and a <= 1.0 for a, q in zip(adjusted, p))
    # Monotone: in the order of the raw p-values the adjusted ones never decrease.
    in_order = [adjusted[i] for i in np.argsort(p, kind="stable")]
    assert all(x <= y for x, y in zip(in_order, in_order[1:]))


@pytest.mark.parametrize("value, p_adjusted, expected", [
    (10.0, 0.01, "confirmed"),       # above 7.16 and significant
    (5.0, 0.001, "inconclusive"),    # inside the null region: not above it, however small p
    (7.16, 0.001, "inconclusive"),   # on the edge is not above it
    (-1.0, 0.01, "reversed"),        # below 0 and significant
    (10.0, 0.2, "inconclusive"),     # not significant
    (-1.0, 0.2, "inconclusive"),
    (10.0, 0.05, "inconclusive"),    # p must be below 5%, not equal
])
def test_verdict_with_a_null_region(value, p_adjusted, expected):
    assert verdict(value, p_adjusted, (0.0, 7.16)) == expected


@pytest.mark.parametrize("value, p_adjusted, expected", [
    (0.1, 0.01, "confirmed"), (-0.1, 0.01, "reversed"), (0.0, 0.001, "inconclusive"), (0.1, 0.3, "inconclusive"),
])
def test_verdict_with_the_point_null(value, p_adjusted, expected):
    assert verdict(value, p_adjusted) == expected


def test_constants():
    assert ALPHA == 0.05
    assert VERDICTS == ("confirmed", "reversed", "inconclusive", "not tested")
    assert verdict(1.0, 0.07, alpha=0.1) == "confirmed"
