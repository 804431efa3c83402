"""Selecting runs and configurations (alignlab.analysis.runs) against answers worked out by hand on small tables."""

from types import SimpleNamespace

import pytest
from run_records import grid, run

from alignlab.analysis.runs import best_run, best_runs, percentile_run, seed_list, top_k_runs


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


def test_selections_apply_to_anything_with_a_name_and_a_score():
    # Configurations (alignlab.analysis.replicates) are ranked by their selection-half score alone.
    configs = [SimpleNamespace(name=f"c{i}", score=s) for i, s in enumerate([0.3, 0.8, 0.1, 0.6, 0.2])]
    assert best_run(configs).name == "c1"
    assert percentile_run(configs).name == "c3"               # n = 5 → index 3 of 0.1 0.2 0.3 0.6 0.8
    assert [c.name for c in top_k_runs(configs, 40)] == ["c1", "c3"]


def test_selection_rejects_empty_grids_and_bad_percentages():
    with pytest.raises(ValueError):
        best_run([])
    with pytest.raises(ValueError):
        percentile_run(grid([1.0]), q=101)
    for k in (0, 101):
        with pytest.raises(ValueError):
            top_k_runs(grid([1.0]), k)


def test_seed_list_names_a_few_seeds_and_counts_the_rest():
    assert seed_list([2, 0, 1]) == "0, 1, 2"
    assert seed_list([100003 * r + 7 for r in range(10)], shown=3) == "7, 100010, … (10 in all)"
