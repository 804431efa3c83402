"""Shares of configurations (alignlab.evidence.shares) against published and hand-worked values."""

import pytest

from alignlab.evidence.shares import compare_shares


def test_newcombe_interval_of_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II example (a): 56/70 − 48/80 = 0.2,
    # method 10 (hybrid score): 0.0524 to 0.3339.
    e = compare_shares(56, 70, 48, 80)
    assert e.value == pytest.approx(0.2)
    assert e.ci == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_fisher_p_value_of_the_tea_tasting_table():
    # 3 of 4 against 1 of 4: P(first row holds ≥ 3 of the 4 counted) = (C(4,3)·C(4,1) + 1)/C(8,4) = 17/70;
    # two-sided as twice the smaller one-sided p-value.
    assert compare_shares(3, 4, 1, 4).p_value == pytest.approx(2 * 17 / 70)
    assert compare_shares(1, 4, 3, 4).p_value == pytest.approx(2 * 17 / 70)
    # 4 of 4 against 0 of 4: 1/70 one-sided.
    assert compare_shares(4, 4, 0, 4).p_value == pytest.approx(2 / 70)


@pytest.mark.parametrize("k1, n1, k2, n2", [(0, 2, 0, 6), (2, 2, 6, 6), (0, 1, 0, 1)])
def test_when_every_item_agrees_nothing_is_significant(k1, n1, k2, n2):
    e = compare_shares(k1, n1, k2, n2)
    assert e.value == 0.0 and e.p_value == 1.0 and e.ci[0] < 0 < e.ci[1]


def test_a_share_of_no_items_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        compare_shares(0, 0, 1, 2)
