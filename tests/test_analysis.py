"""Sweep analyses (alignlab.analysis.hitchhiker) against answers worked out by hand on small tables."""

import math

import numpy as np
import pytest

from alignlab.analysis.hitchhiker import (RunRecord, best_run, best_runs, expected_performance, fraction_worse,
                               hitchhiker_claims, paired_difference, percentile_run, sensitivity,
                               top_k_distributions, top_k_runs, varying_params, verdict, win_matrix)


def run(name, score=0.0, method="dpo", params=None, metrics=None, **samples):
    """A RunRecord with a hand-set score; per-sample columns given as keyword lists."""
    all_metrics = {"mean_score": {"value": score, "ci_low": score, "ci_high": score}}
    for key, value in (metrics or {}).items():
        all_metrics[key] = None if value is None else {"value": value, "ci_low": value, "ci_high": value}
    return RunRecord(name, method, params or {}, all_metrics,
                     {k: np.asarray(v) for k, v in samples.items()})


def grid(scores, prefix="r"):
    """Runs r0, r1, ... with the given scores, in the given (unsorted) order."""
    return [run(f"{prefix}{i}", s) for i, s in enumerate(scores)]


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


def test_top_k_distributions_lists_the_metric_of_the_top_runs_best_first():
    runs = [run("a", 1.0, metrics={"length": 40}), run("b", 4.0, metrics={"length": 10}),
            run("c", 3.0, metrics={"length": 20}), run("d", 2.0, metrics={"length": 30})]
    out = top_k_distributions({"dpo": runs}, ks=(25, 50, 100), metric="length")
    assert out == {"dpo": {25: [10.0], 50: [10.0, 20.0], 100: [10.0, 20.0, 30.0, 40.0]}}


# ------------------------------------------------------------------ grid statistics

def test_expected_performance_by_hand():
    out = expected_performance(grid([3.0, 1.0, 10.0, 2.0, 4.0]))
    # sorted 1 2 3 4 10: mean 4, median 3, numpy-linear quartiles at positions 1 and 3 → 2 and 4.
    assert out["mean"] == pytest.approx(4.0)
    assert (out["median"], out["q25"], out["q75"], out["min"], out["max"]) == (3.0, 2.0, 4.0, 1.0, 10.0)
    assert out["n_runs"] == 5
    assert 1.0 <= out["ci_low"] < 4.0 < out["ci_high"] <= 10.0


def test_fraction_worse_with_wilson_interval():
    out = fraction_worse(grid([1.0, 2.0, 3.0, 4.0, 5.0]), baseline_score=3.0)
    assert (out["count"], out["n"], out["fraction"]) == (2, 5, 0.4)  # 3.0 is not worse than 3.0
    # Wilson closed form for 2/5, z = 1.959964: published value [0.1176, 0.7693].
    z, n, p = 1.959964, 5, 0.4
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert out["ci_low"] == pytest.approx(centre - half) and out["ci_low"] == pytest.approx(0.1176, abs=1e-4)
    assert out["ci_high"] == pytest.approx(centre + half) and out["ci_high"] == pytest.approx(0.7693, abs=1e-4)
    # 0 of 10: the interval is [0, z²/(n + z²)] = [0, 3.841459/13.841459].
    none = fraction_worse(grid([5.0] * 10), baseline_score=1.0)
    assert none["fraction"] == 0 and none["ci_low"] == 0
    assert none["ci_high"] == pytest.approx(3.841459 / 13.841459, abs=1e-6)


def test_sensitivity_groups_runs_by_parameter_value():
    runs = [run("a", 1.0, params={"learning_rate": 5e-4, "beta": 0.1, "seed": 0}),
            run("b", 3.0, params={"learning_rate": 1e-4, "beta": 0.1, "seed": 0}),
            run("c", 2.0, params={"learning_rate": 5e-4, "beta": 0.1, "seed": 1}),
            run("d", 6.0, params={"learning_rate": 1e-3, "beta": 0.1, "seed": 1}),
            run("e", 9.0, params={"learning_rate": 5e-4, "beta": 0.1, "seed": 2})]
    assert sensitivity(runs, "learning_rate", "mean_score") == [
        {"value": 1e-4, "mean": 3.0, "min": 3.0, "max": 3.0, "n": 1},
        {"value": 5e-4, "mean": 4.0, "min": 1.0, "max": 9.0, "n": 3},
        {"value": 1e-3, "mean": 6.0, "min": 6.0, "max": 6.0, "n": 1}]
    assert sensitivity(runs, "seed", "mean_score") == [
        {"value": 0, "mean": 2.0, "min": 1.0, "max": 3.0, "n": 2},
        {"value": 1, "mean": 4.0, "min": 2.0, "max": 6.0, "n": 2},
        {"value": 2, "mean": 9.0, "min": 9.0, "max": 9.0, "n": 1}]
    assert varying_params(runs) == ["learning_rate", "seed"]  # beta is constant


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


@pytest.mark.parametrize("low, high, expected", [(0.1, 0.5, "confirmed"), (-0.5, -0.1, "reversed"),
                                                 (-0.1, 0.5, "not confirmed"), (0.0, 0.5, "not confirmed")])
def test_verdict(low, high, expected):
    assert verdict(low, high) == expected


# ------------------------------------------------------------------ Hitchhiker claims

N = 40
PROMPTS = [f"p{i}" for i in range(N)]
BASE = np.arange(N) % 4              # 0 1 2 3 ...: mean 1.5
WIGGLE = np.where(np.arange(N) % 2, 0.5, -0.5)  # mean 0, so it shifts no run's score
LENGTH = 100.0 + np.arange(N)


def method_grid(method, offsets, gold_shift=0.0, length_shift=0.0, reverse=False):
    """Runs whose gold is BASE + offset + gold_shift per prompt, so score = 1.5 + offset."""
    order = slice(None, None, -1) if reverse else slice(None)
    return [run(f"{method}-{k}", 1.5 + off, method, params={"seed": 0, "learning_rate": k},
                prompt_id=PROMPTS[order], gold_score=(BASE + off + gold_shift)[order],
                length=(LENGTH + length_shift)[order])
            for k, off in enumerate(offsets)]


def sweep():
    return {
        "dpo": method_grid("dpo", [0.0, 0.1, 0.2, 0.3]),
        # LN-DPO: DPO's gold ± 0.5 per prompt (no better or worse on average), 10 tokens longer.
        "ln-dpo": method_grid("ln-dpo", [0.0, 0.05, 0.1, 0.3], gold_shift=WIGGLE, length_shift=10),
        # SimPO: gold uniformly +1 above DPO, 20 tokens shorter; prompts stored in reverse order.
        "simpo": method_grid("simpo", [1.0, 1.28, 1.29, 1.3], gold_shift=0.0, length_shift=-20, reverse=True),
    }


def test_claims_verdicts_on_a_hand_built_sweep():
    sft = run("sft", 1.75, "sft")
    claims = {c["claim"]: c for c in hitchhiker_claims(sweep(), sft)}
    # (value worked out by hand, verdict)
    expected = {
        # best runs: SimPO (1.3) − LN-DPO (0.3 ± 0.5) = 1 ∓ 0.5 on every prompt.
        "best score: SimPO ≥ LN-DPO": (1.0, "confirmed"),
        # LN-DPO (0.3 ± 0.5) − DPO (0.3) = ±0.5, mean 0.
        "best score: LN-DPO ≥ DPO": (0.0, "not confirmed"),
        # grid means: SimPO offsets avg 1.2175, LN-DPO 0.1125, DPO 0.15.
        "expected score: SimPO ≥ LN-DPO": (1.105, "confirmed"),
        "expected score: LN-DPO ≥ DPO": (-0.0375, "not confirmed"),
        # runs below SFT (1.75): DPO 3/4, LN-DPO 3/4, SimPO 0/4 → 3/4 − 3/4.
        "DPO is most often worse than SFT": (0.0, "not confirmed"),
        # DPO length − other length at the best runs.
        "LN-DPO responses shorter than DPO's": (-10.0, "reversed"),
        "SimPO responses shorter than DPO's": (20.0, "confirmed"),
        # drop = best − 75th-percentile run (index 2 of 4): DPO 0.3−0.2, LN-DPO 0.3−0.1, SimPO 1.3−1.29.
        "DPO drops more than LN-DPO from best to top-25% run": (-0.1, "reversed"),
        "DPO drops more than SimPO from best to top-25% run": (0.09, "confirmed"),
    }
    for claim, (value, outcome) in expected.items():
        c = claims[claim]
        assert c["value"] == pytest.approx(value, abs=1e-9), claim
        assert c["verdict"] == outcome, claim
        assert c["ci_low"] <= c["value"] + 1e-9 and c["value"] <= c["ci_high"] + 1e-9, claim
    # No ln_kl column in the samples: both KL claims are not tested.
    kl = [c for c in claims.values() if "KL" in c["claim"]]
    assert len(kl) == 2 and all(c["verdict"] == "not tested" and c["value"] is None for c in kl)
    assert all("ln_kl" in c["detail"] for c in kl)
    assert len(claims) == 11
    assert claims["best score: SimPO ≥ LN-DPO"]["n_runs"] == 8
    assert claims["DPO is most often worse than SFT"]["n_runs"] == 13  # 3 grids of 4 + the SFT run
    assert "seeds 0" in claims["expected score: SimPO ≥ LN-DPO"]["detail"]


def test_claims_with_absent_methods_are_not_tested():
    runs = sweep()
    del runs["simpo"]
    claims = hitchhiker_claims(runs, sft=None)
    simpo = [c for c in claims if "SimPO" in c["claim"]]
    assert len(simpo) == 5
    assert all(c["verdict"] == "not tested" and c["value"] is None and "SimPO" in c["detail"] for c in simpo)
    worse = next(c for c in claims if c["claim"] == "DPO is most often worse than SFT")
    assert worse["verdict"] == "not tested" and "SFT" in worse["detail"]
    assert next(c for c in claims if c["claim"] == "LN-DPO responses shorter than DPO's")["verdict"] == "reversed"


def test_dpo_worse_than_sft_claim_confirmed():
    # Every DPO run is below SFT, no LN-DPO or SimPO run is: 4/4 − max(0/4, 0/4) = 1.
    runs = {"dpo": grid([0.1, 0.2, 0.3, 0.4], "d"), "ln-dpo": grid([2.0, 3.0], "l"), "simpo": grid([5.0], "s")}
    claims = hitchhiker_claims(runs, run("sft", 1.0, "sft"))
    claim = next(c for c in claims if c["claim"] == "DPO is most often worse than SFT")
    assert (claim["value"], claim["ci_low"], claim["ci_high"], claim["verdict"]) == (1.0, 1.0, 1.0, "confirmed")
    # These runs carry no per-sample columns: the per-prompt claims are not tested, not a crash.
    per_prompt = [c for c in claims if "best" in c["claim"] or "shorter" in c["claim"]]
    assert len(per_prompt) == 6 and all(c["verdict"] == "not tested" for c in per_prompt)
