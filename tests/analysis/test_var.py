"""The VAR study's analyses (alignlab.analysis.var, SPEC §6 items 7–9) against answers worked out by hand."""

import json
import math

import numpy as np
import pytest

from alignlab.analysis.runs import RunRecord
from alignlab.analysis.var import (VAR_PAPER_GAIN_PCT, convergence_race, reward_by_family, var_vs_dpo_claim,
                                   z_estimator_variance)


def run(name, method="var", params=None, **samples):
    """A RunRecord whose per-sample columns are given as keyword lists."""
    return RunRecord(name, method, params or {}, {}, {k: np.asarray(v) for k, v in samples.items()})


# ------------------------------------------------------------------ reward by prompt family

FAMILIES = {"p1": "helpful", "p2": "helpful", "p3": "harmful", "p4": "harmful"}


def test_reward_by_family_means_per_family_with_all_first():
    r = run("var-s0", prompt_id=["p1", "p2", "p3", "p4", "p5"], gold_score=[1.0, 2.0, 3.0, 6.0, 8.0],
            proxy_score=[0.0, 1.0, 5.0, 7.0, 2.0])
    table = reward_by_family(r, FAMILIES)
    assert list(table) == ["all", "harmful", "helpful"]            # p5 has no family: only in "all"
    assert [table[f]["n"] for f in table] == [5, 2, 2]
    assert table["all"]["gold"]["mean"] == pytest.approx(20 / 5)
    assert table["helpful"]["gold"]["mean"] == pytest.approx(1.5)  # (1 + 2) / 2
    assert table["harmful"]["gold"]["mean"] == pytest.approx(4.5)  # (3 + 6) / 2
    assert table["helpful"]["proxy"]["mean"] == pytest.approx(0.5)
    assert table["harmful"]["proxy"]["mean"] == pytest.approx(6.0)
    for family, values in (("helpful", [1, 2]), ("harmful", [3, 6])):
        gold = table[family]["gold"]
        # A bootstrap mean of these values cannot leave their range, and the CI holds the estimate.
        assert min(values) <= gold["ci_low"] <= gold["mean"] <= gold["ci_high"] <= max(values)


def test_reward_by_family_without_families_or_proxy():
    r = run("dpo-s0", "dpo", prompt_id=[10, 11, 12], gold_score=[-1.0, -2.0, -6.0])
    table = reward_by_family(r, None)
    assert list(table) == ["all"]
    assert table["all"]["n"] == 3 and table["all"]["gold"]["mean"] == pytest.approx(-3.0)
    assert table["all"]["proxy"] is None
    # Integer prompt ids match families keyed by text (and the other way round).
    assert reward_by_family(r, {"10": "helpful", 12: "harmful"})["helpful"]["gold"]["mean"] == pytest.approx(-1.0)


# ------------------------------------------------------------------ VAR vs DPO (+7.16%)

def test_var_vs_dpo_confirmed_with_hand_computed_gain():
    var = run("var-l1-s0", prompt_id=["a", "b", "c", "x"], gold_score=[2.0, 3.0, 4.0, 100.0], params={"seed": 0})
    dpo = run("dpo-b0.1-s1", "dpo", prompt_id=["c", "b", "a"], gold_score=[3.0, 2.0, 1.0], params={"seed": 1})
    c = var_vs_dpo_claim(var, dpo)
    # Shared prompts a, b, c (x is VAR's only): VAR 2, 3, 4 vs DPO 1, 2, 3 → every difference is 1.
    assert c["value"] == pytest.approx(1.0)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((1.0, 1.0))
    assert c["verdict"] == "confirmed" and c["n_runs"] == 2
    assert c["gain_pct"] == pytest.approx(50.0)                     # 100·(3 − 2)/2
    low, high = c["gain_pct_ci"]
    # Each resample has VAR mean = DPO mean + 1, DPO mean in [1, 3] → gain 100/mean_DPO in [33⅓, 100].
    assert 100 / 3 - 1e-9 <= low <= 50 <= high <= 100 + 1e-9
    assert f"{VAR_PAPER_GAIN_PCT:+.2f}%" == "+7.16%" and "+7.16%" in c["claim"]
    assert "var-l1-s0" in c["detail"] and "dpo-b0.1-s1" in c["detail"] and "3 shared prompts" in c["detail"]
    assert "seeds 0,1" in c["detail"]
    json.dumps(c)


def test_var_vs_dpo_reversed_and_negative_rewards():
    var = run("var", prompt_id=["a", "b", "c"], gold_score=[0.5, 0.5, 0.4])
    dpo = run("dpo", "dpo", prompt_id=["a", "b", "c"], gold_score=[1.0, 1.0, 1.0])
    c = var_vs_dpo_claim(var, dpo)
    assert c["verdict"] == "reversed" and c["value"] == pytest.approx(1.4 / 3 - 1)
    assert c["gain_pct"] == pytest.approx(100 * (1.4 / 3 - 1))      # −53.3%
    # Negative rewards: VAR −1 vs DPO −2 is a gain of 1 on a magnitude of 2 → +50%, not −50%.
    var = run("var", prompt_id=["a", "b"], gold_score=[-1.0, -1.0])
    dpo = run("dpo", "dpo", prompt_id=["a", "b"], gold_score=[-2.0, -2.0])
    assert var_vs_dpo_claim(var, dpo)["gain_pct"] == pytest.approx(50.0)


def test_var_vs_dpo_gain_undefined_at_zero_dpo_mean_and_untested_without_gold():
    var = run("var", prompt_id=["a", "b"], gold_score=[1.0, 1.0])
    dpo = run("dpo", "dpo", prompt_id=["a", "b"], gold_score=[1.0, -1.0])
    c = var_vs_dpo_claim(var, dpo)
    assert c["gain_pct"] is None and c["gain_pct_ci"] == (None, None)
    assert c["value"] == pytest.approx(1.0)                        # (0 + 2) / 2: the verdict still stands
    no_gold = run("var", prompt_id=["a", "b"], length=[3, 4])
    c = var_vs_dpo_claim(no_gold, dpo)
    assert c["verdict"] == "not tested" and c["value"] is None and c["gain_pct"] is None


# ------------------------------------------------------------------ the convergence race (> 5× faster)

IDS = ["p0", "p1", "p2", "p3"]
OFFSETS = np.array([0.3, -0.3, 0.1, -0.1])  # mean 0: the mean over prompts is the level below


def point(seconds, samples, level, shift=0, ids=IDS):
    """An evaluation point whose mean gold over IDS is `level` (the offsets vary per point via shift)."""
    return {"seconds": seconds, "samples": samples, "prompt_id": np.array(ids),
            "gold_score": level + np.roll(OFFSETS, shift)[:len(ids)]}


START = point(0, 0, 0.0)
# GRPO: 0 → 0.5 → 1.0 → 2.0 at 100, 200, 300 s (1000, 2000, 3000 samples). Final 2.0, target 0.9·2 = 1.8,
# crossed between 1.0 and 2.0: 200 + (1.8 − 1.0)/(2.0 − 1.0)·100 = 280 s, 2800 samples.
GRPO = [point(100, 1000, 0.5, 1), point(200, 2000, 1.0, 2), point(300, 3000, 2.0, 3)]


def test_race_crossings_are_linear_interpolations():
    # VAR: 0 → 1.0 → 2.2 at 10, 20 s: 10 + (1.8 − 1.0)/1.2·10 = 16⅔ s; 500 + ⅔·500 = 833⅓ samples.
    var = [point(10, 500, 1.0, 1), point(20, 1000, 2.2, 2)]
    dpo = [point(50, 400, 0.4), point(100, 800, 0.6, 1)]           # never reaches 1.8
    r = convergence_race({"var": var, "grpo": GRPO, "dpo": dpo}, START)
    assert (r["start_reward"], r["grpo_final"], r["target"]) == pytest.approx((0.0, 2.0, 1.8))
    assert r["methods"]["grpo"]["seconds_to_target"] == pytest.approx(280.0)
    assert r["methods"]["grpo"]["samples_to_target"] == pytest.approx(2800.0)
    assert r["methods"]["var"]["seconds_to_target"] == pytest.approx(50 / 3)
    assert r["methods"]["var"]["samples_to_target"] == pytest.approx(2500 / 3)
    assert r["methods"]["dpo"] == {"seconds_to_target": None, "samples_to_target": None,
                                   "final_reward": pytest.approx(0.6)}
    assert r["speedup"]["value"] == pytest.approx(280 / (50 / 3))   # 16.8
    assert r["samples_ratio"]["value"] == pytest.approx(2800 / (2500 / 3))  # 3.36
    json.dumps(r)


def test_race_aligns_points_by_prompt_id():
    # Same race with the points' prompts shuffled and an extra prompt only some points have: it is left
    # out, so its huge score changes nothing.
    def shuffled(p):
        order = [2, 0, 3, 1]
        return {**p, "prompt_id": np.append(p["prompt_id"][order], "extra"),
                "gold_score": np.append(p["gold_score"][order], 1e6)}
    var = [shuffled(point(10, 500, 1.0, 1)), point(20, 1000, 2.2, 2)]
    r = convergence_race({"var": var, "grpo": [shuffled(p) for p in GRPO]}, START)
    assert r["methods"]["var"]["seconds_to_target"] == pytest.approx(50 / 3)
    assert r["methods"]["grpo"]["seconds_to_target"] == pytest.approx(280.0)


def test_race_target_is_a_fraction_of_the_gain_when_rewards_are_negative():
    start = point(0, 0, -3.0)
    grpo = [point(100, 100, -2.0), point(200, 200, -1.0)]
    var = [point(30, 60, -1.0)]
    r = convergence_race({"var": var, "grpo": grpo}, start)
    assert r["target"] == pytest.approx(-3 + 0.9 * 2)              # −1.2, not 0.9 · (−1) = −0.9
    assert r["methods"]["grpo"]["seconds_to_target"] == pytest.approx(180.0)  # 100 + 0.8·100
    assert r["methods"]["var"]["seconds_to_target"] == pytest.approx(27.0)    # from the start: 0.9·30
    assert r["methods"]["var"]["samples_to_target"] == pytest.approx(54.0)
    assert r["speedup"]["value"] == pytest.approx(180 / 27)


def test_race_not_testable_when_grpo_does_not_improve():
    grpo = [point(100, 100, -0.5), point(200, 200, 0.0)]
    var = [point(10, 10, 1.0)]
    r = convergence_race({"var": var, "grpo": grpo}, START)
    assert r["verdict"] == "not testable" and "GRPO did not improve" in r["reason"]
    assert r["speedup"] is None and r["samples_ratio"] is None
    assert r["methods"]["var"]["seconds_to_target"] is None
    assert r["methods"]["var"]["final_reward"] == pytest.approx(1.0)


def test_race_reversed_when_var_never_reaches_the_target():
    var = [point(10, 100, 0.5), point(20, 200, 1.0)]
    r = convergence_race({"var": var, "grpo": GRPO}, START)
    assert r["methods"]["var"]["seconds_to_target"] is None
    assert r["speedup"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert r["verdict"] == "reversed"


def test_race_not_confirmed_when_var_is_faster_but_not_five_times():
    var = [point(100, 1000, 1.2), point(200, 2000, 2.4)]           # 100 + 0.6/1.2·100 = 150 s
    r = convergence_race({"var": var, "grpo": GRPO}, START)
    assert r["speedup"]["value"] == pytest.approx(280 / 150)
    assert r["verdict"] == "not confirmed"


def test_race_confirmed_with_many_noisy_prompts():
    rng = np.random.default_rng(1)
    ids = [f"p{i}" for i in range(400)]

    def noisy(seconds, samples, level):
        return {"seconds": seconds, "samples": samples, "prompt_id": np.array(ids),
                "gold_score": level + rng.normal(0, 0.01, len(ids))}
    curves = {"grpo": [noisy(100, 1000, 0.5), noisy(200, 2000, 1.0), noisy(300, 3000, 2.0)],
              "var": [noisy(10, 500, 1.0), noisy(20, 1000, 2.2)]}
    r = convergence_race(curves, noisy(0, 0, 0.0), n_resamples=500)
    assert r["speedup"]["value"] == pytest.approx(16.8, rel=0.02)
    assert 15 < r["speedup"]["ci_low"] <= r["speedup"]["value"] <= r["speedup"]["ci_high"] < 19
    assert r["verdict"] == "confirmed" and "above the paper's 5×" in r["reason"]


def test_race_counts_a_setup_spent_at_the_start_level():
    # VAR spends 40 s before its first step (its reward stays at the start, 0), then reaches 2.0 at
    # 60 s: the 1.8 target falls at 40 + 1.8/2.0·20 = 58 s, not at 1.8/2.0·60 = 54 s as it would if
    # the improvement were spread from 0 s.
    var = [point(40, 0, 0.0), point(60, 100, 2.0, 1)]
    r = convergence_race({"var": var, "grpo": GRPO}, START, n_resamples=50)
    assert r["methods"]["var"]["seconds_to_target"] == pytest.approx(58)
    assert r["methods"]["var"]["samples_to_target"] == pytest.approx(90)
    assert r["speedup"]["value"] == pytest.approx(280 / 58)


def test_race_rejects_missing_methods_and_unordered_points():
    with pytest.raises(ValueError, match="grpo"):
        convergence_race({"var": [point(10, 10, 1.0)]}, START)
    with pytest.raises(ValueError, match="seconds"):
        convergence_race({"var": [point(20, 10, 1.0), point(10, 20, 2.0)], "grpo": GRPO}, START)


# ------------------------------------------------------------------ the in-batch Z estimator

def test_z_estimator_with_equal_scores_is_exact_and_uniform():
    ref = np.tile([-5.0, -4.0, -3.0, -2.0], 4)
    lam = 0.5
    rewards = lam * (-7.0 - ref)                                   # a_i = ℓref + r/λ = −7 for every response
    rows = z_estimator_variance(ref, rewards, lam)
    assert [row["batch_size"] for row in rows] == [2, 4, 8, 16]    # 32 and 64 exceed the 16 responses
    for row in rows:
        assert row["log_z_mean"] == pytest.approx(-7.0)            # log((1/b)·b·e^−7)
        assert row["log_z_sd"] == pytest.approx(0.0, abs=1e-12)
        assert row["weight_sd"] == pytest.approx(0.0, abs=1e-12)
        assert row["ess_fraction"] == pytest.approx(1.0)
        assert row["max_weight"] == pytest.approx(1 / row["batch_size"])


def test_z_estimator_three_responses_against_the_exact_expectation():
    # a = (0, log 2, log 4), i.e. exp(a) = (1, 2, 4), reached through both ℓref and r/λ.
    lam = 0.5
    ref = np.array([-1.0, math.log(2) - 2, math.log(4) + 1])
    rewards = np.array([0.5, 1.0, -0.5])
    pair, whole = z_estimator_variance(ref, rewards, lam, batch_sizes=(2, 3, 4), draws=20000)
    # b = 2: the pairs {1,2}, {1,4}, {2,4} are equally likely. log Z = log 1.5, log 2.5, log 3;
    # ω = (⅓, ⅔), (0.2, 0.8), (⅓, ⅔); b·ω deviates from 1 by ±⅓, ±0.6, ±⅓;
    # ESS/b = 1/(2Σω²) = 0.9, 1/1.36, 0.9; max ω = ⅔, 0.8, ⅔.
    log_z = np.log([1.5, 2.5, 3.0])
    assert pair["batch_size"] == 2
    assert pair["log_z_mean"] == pytest.approx(log_z.mean(), abs=0.01)
    assert pair["log_z_sd"] == pytest.approx(math.sqrt((log_z ** 2).mean() - log_z.mean() ** 2), abs=0.01)
    assert pair["weight_sd"] == pytest.approx(math.sqrt((4 / 9 + 2 * 0.36) / 6), abs=0.01)
    assert pair["ess_fraction"] == pytest.approx((1.8 + 1 / 1.36) / 3, abs=0.005)
    assert pair["max_weight"] == pytest.approx((4 / 3 + 0.8) / 3, abs=0.005)
    # b = 3 = every response: each draw is the whole set, so there is no spread (b = 4 is skipped).
    assert whole["batch_size"] == 3
    assert whole["log_z_mean"] == pytest.approx(math.log(7 / 3))
    assert whole["log_z_sd"] == pytest.approx(0.0, abs=1e-12)
    assert whole["ess_fraction"] == pytest.approx(49 / 21 / 3)      # 1/Σω² with ω = (1, 2, 4)/7
    assert whole["max_weight"] == pytest.approx(4 / 7)


def test_z_estimator_survives_summed_log_probs():
    # Summed log-probs of ~−1000 underflow exp() to 0; shifting every a_i by −1000 must only shift log Z.
    rng = np.random.default_rng(0)
    ref, rewards = rng.normal(0, 1, 50), rng.normal(0, 1, 50)
    base = z_estimator_variance(ref, rewards, lam=0.1, batch_sizes=(4, 32))
    shifted = z_estimator_variance(ref - 1000, rewards, lam=0.1, batch_sizes=(4, 32))
    for b, s in zip(base, shifted):
        assert s["log_z_mean"] == pytest.approx(b["log_z_mean"] - 1000)
        for key in ("log_z_sd", "weight_sd", "ess_fraction", "max_weight"):
            assert s[key] == pytest.approx(b[key], abs=1e-9)
