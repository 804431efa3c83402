"""Selecting and comparing runs (alignlab.analysis.runs) against answers worked out by hand on small tables."""

import numpy as np
import pytest
from run_records import grid, run

from alignlab.analysis.runs import best_run, best_runs, paired_difference, percentile_run, top_k_runs, win_matrix


# ------------------------------------------------------------------ selecting runs

def test_best_run_and_best_runs_group_by_method_and_break_ties_by_name():
    runs = [run("b", 2.0, "simpo"), run("x", 1.0, "dpo"), run("a", 2.0, "simpo"), run("y", 3.0, "dpo")]
    assert best_run(runs).name == "y"
    best = best_runs(runs)
    assert list(best) == ["simpo", "dpo"]  # order of first appearance
    # a and b tie at 2.0: ranking by (score, name) puts b last, and the order of the list is irrelevant.
    assert best["simpo"].name == "b" and best_run(runs[::-1][1:]).name == "b"
    assert best["dpo"].name == "y"


@pytest.mark.parametrize("scores, expected", [
    ([0.7], "r0"),                                         # n=1 → index 0
    ([0.3, 0.1, 0.4, 0.2], "r0"),                           # n=4 → floor(3·0.75 + 0.5) = 2: 0.3, second best
    ([0.5, 0.1, 0.4, 0.2, 0.3], "r2"),                      # n=5 → floor(4·0.75 + 0.5) = 3: 0.4
    ([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5], "r4"),  # n=9 → floor(8·0.75 + 0.5) = 6: 0.7
])
def test_percentile_run_picks_the_top_25_percent_model(scores, expected):
    assert percentile_run(grid(scores), q=75).name == expected


def test_percentile_run_extremes_are_worst_and_best():
    runs = grid([0.5, 0.1, 0.4, 0.2, 0.3])
    assert percentile_run(runs, q=0).name == "r1"
    assert percentile_run(runs, q=100).name == best_run(runs).name == "r0"


def test_top_k_runs_on_eight_runs():
    runs = grid([0.3, 0.8, 0.1, 0.6, 0.2, 0.7, 0.5, 0.4])  # best first: r1 r5 r3 r6 r7 r0 r4 r2
    names = lambda k: [r.name for r in top_k_runs(runs, k)]  # noqa: E731
    assert names(5) == ["r1"]                 # ceil(0.40) = 1
    assert names(10) == ["r1"]                # ceil(0.80) = 1
    assert names(13) == ["r1", "r5"]          # ceil(1.04) = 2
    assert names(25) == ["r1", "r5"]          # 2
    assert names(50) == ["r1", "r5", "r3", "r6"]
    assert names(100) == ["r1", "r5", "r3", "r6", "r7", "r0", "r4", "r2"]


def test_top_k_runs_has_no_float_drift():
    # 7/100·100 is 7.000000000000001 in floating point; the top 7% of 100 runs is 7 runs, not 8.
    assert len(top_k_runs(grid(range(100)), 7)) == 7


# ------------------------------------------------------------------ per-prompt comparisons

# Three models; B lists its prompts in another order and C lacks p4 but has p9, so only a join by
# prompt_id gives the right pairs.
A = run("A", prompt_id=["p1", "p2", "p3", "p4"], gold_score=[1.0, 2.0, 3.0, 4.0])
B = run("B", prompt_id=["p4", "p3", "p2", "p1"], gold_score=[0.0, 2.0, 3.0, 1.0])
C = run("C", prompt_id=["p1", "p2", "p3", "p9"], gold_score=[2.0, 2.0, 5.0, 7.0])


def test_win_matrix_by_hand():
    m = win_matrix({"A": A, "B": B, "C": C})
    # A vs B by prompt: p1 1=1 ½, p2 2<3 0, p3 3>2 1, p4 4>0 1 → 2.5/4.
    # A vs C on p1..p3:  1<2 0, 2=2 ½, 3<5 0 → 0.5/3.   B vs C: 1<2 0, 3>2 1, 2<5 0 → 1/3.
    expected = [[0.5, 0.625, 1 / 6], [0.375, 0.5, 1 / 3], [5 / 6, 2 / 3, 0.5]]
    assert m["names"] == ["A", "B", "C"]
    assert np.allclose(m["rate"], expected)
    assert m["prompts"] == [[4, 4, 3], [4, 4, 3], [3, 3, 4]]
    rate, low, high = (np.array(m[k]) for k in ("rate", "ci_low", "ci_high"))
    assert np.allclose(rate + rate.T, 1.0)
    assert np.all(low <= rate + 1e-12) and np.all(rate <= high + 1e-12)
    assert np.allclose(np.diag(low), 0.5) and np.allclose(np.diag(high), 0.5)
    assert np.allclose(low, 1 - high.T)  # the CI of j over i mirrors that of i over j


def test_paired_difference_joins_by_prompt():
    d = paired_difference(A, B)
    # per prompt A − B: p1 0, p2 −1, p3 1, p4 4 → mean 1.
    assert d["value"] == pytest.approx(1.0) and d["n"] == 4
    assert d["ci_low"] <= 1.0 <= d["ci_high"]
    assert paired_difference(A, C)["value"] == pytest.approx((-1 + 0 - 2) / 3)
