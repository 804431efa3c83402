"""Sweep analyses (alignlab.analysis.hitchhiker) against answers worked out by hand on small tables."""

import math

import numpy as np
import pytest
from run_records import grid, run

from alignlab.analysis.hitchhiker import (expected_performance, fraction_worse, hitchhiker_claims, sensitivity,
                                          top_k_distributions, varying_params)


# ------------------------------------------------------------------ grid statistics

def test_top_k_distributions_lists_the_metric_of_the_top_runs_best_first():
    runs = [run("a", 1.0, metrics={"length": 40}), run("b", 4.0, metrics={"length": 10}),
            run("c", 3.0, metrics={"length": 20}), run("d", 2.0, metrics={"length": 30})]
    out = top_k_distributions({"dpo": runs}, ks=(25, 50, 100), metric="length")
    assert out == {"dpo": {25: [10.0], 50: [10.0, 20.0], 100: [10.0, 20.0, 30.0, 40.0]}}


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
