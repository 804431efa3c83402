"""The VAR study's analyses (alignlab.analysis.var, SPEC §6 items 7–9) against answers worked out by hand."""

import json
import math

import numpy as np
import pytest
from run_records import replicate, run

from alignlab.analysis import SweepEvidence, decide
from alignlab.analysis.var import (VAR_PAPER_GAIN_PCT, convergence_race, family_names, reward_by_family,
                                   var_gain_claims, var_vs_dpo_descriptives, z_estimator_variance)
from alignlab.evidence import split_prompts

# ------------------------------------------------------------------ reward by prompt family

# Eight prompts; the rule (tests/evidence/test_split.py) puts p0 p2 p3 p7 in the selection half and
# p1 p4 p5 p6 in the reporting half. Families: p1 p4 helpful, p5 harmful, p6 none; p0 p2 are harmful
# and p3 is "select-only", but they never report.
IDS8 = [f"p{i}" for i in range(8)]
FAMILIES = {"p0": "harmful", "p1": "helpful", "p2": "harmful", "p3": "select-only", "p4": "helpful",
            "p5": "harmful"}


# Families of one or two reporting prompts: a resample that draws none of them has no mean (NaN, a
# RuntimeWarning from alignlab.evidence.bootstrap) and is left out of the estimate.
SMALL_FAMILIES = pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")


def test_the_eight_prompts_split_as_the_tables_below_assume():
    assert split_prompts(IDS8).reporting == ("p1", "p4", "p5", "p6")


def family_sweep(with_proxy=True):
    #                  p0  p1  p2  p3  p4  p5  p6  p7
    seeds = [np.array([9., 1., 9., 9., 3., 5., 7., 9.]),
             np.array([9., 3., 9., 9., 5., 9., 7., 9.])]
    proxy = [np.array([0., 0., 0., 0., 2., 4., 6., 0.]), np.array([0., 2., 0., 0., 0., 8., 6., 0.])]
    runs = [replicate("var", 0, s, IDS8, g, **({"proxy_score": proxy[s]} if with_proxy else {}))
            for s, g in enumerate(seeds)]
    sft = run("sft", method="sft", prompt_id=IDS8, gold_score=[0, 2, 0, 0, 4, -1, 0, 0])
    return SweepEvidence(runs, sft, n_resamples=300)


@SMALL_FAMILIES
def test_reward_by_family_means_per_family_with_all_first():
    ev = family_sweep()
    table = reward_by_family(ev, ev.by_method["var"][0], FAMILIES)
    # Reporting half only: "select-only" never reports; p6 has no family and counts only towards "all".
    assert list(table) == ["all", "harmful", "helpful"]
    assert [table[f]["n"] for f in table] == [4, 1, 2]
    assert family_names(ev, FAMILIES) == ["harmful", "helpful"]
    # gold over both seeds: all (1 3 5 7 + 3 5 9 7)/8 = 5; helpful p1 p4 (1 3 3 5)/4 = 3; harmful p5 (5 9)/2 = 7.
    assert table["all"]["gold"]["mean"] == pytest.approx(5.0)
    assert table["helpful"]["gold"]["mean"] == pytest.approx(3.0)
    assert table["harmful"]["gold"]["mean"] == pytest.approx(7.0)
    # proxy: helpful (0 2 2 0)/4 = 1, harmful (4 8)/2 = 6, all (0 2 4 6 2 0 8 6)/8 = 3.5.
    assert table["helpful"]["proxy"]["mean"] == pytest.approx(1.0)
    assert table["harmful"]["proxy"]["mean"] == pytest.approx(6.0)
    assert table["all"]["proxy"]["mean"] == pytest.approx(3.5)
    for family in table:
        for column in ("gold", "proxy"):
            e = table[family][column]
            assert e["ci_low"] <= e["mean"] <= e["ci_high"]


@SMALL_FAMILIES
def test_reward_by_family_of_the_sft_baseline_and_without_families_or_proxy():
    ev = family_sweep(with_proxy=False)
    sft = reward_by_family(ev, None, FAMILIES)
    # SFT on p1 p4 p5 p6: 2 4 −1 0 → all 5/4, helpful 3, harmful −1; a fixed model has no proxy here.
    assert sft["all"]["gold"]["mean"] == pytest.approx(1.25)
    assert sft["helpful"]["gold"]["mean"] == pytest.approx(3.0)
    assert sft["harmful"]["gold"]["mean"] == pytest.approx(-1.0)
    assert sft["all"]["proxy"] is None
    table = reward_by_family(ev, ev.by_method["var"][0], None)
    assert list(table) == ["all"] and table["all"]["n"] == 4 and table["all"]["proxy"] is None


@SMALL_FAMILIES
def test_families_keyed_by_integer_ids_match_text_ids():
    ids = [10, 11, 12, 13, 14, 15]
    rep = split_prompts(ids).reporting
    runs = [replicate("dpo", 0, s, ids, [float(p) + s for p in ids]) for s in range(2)]
    ev = SweepEvidence(runs, None, n_resamples=100)
    families = {int(rep[0]): "helpful", rep[1]: "helpful"}       # one key an int, one text
    table = reward_by_family(ev, ev.by_method["dpo"][0], families)
    assert table["helpful"]["n"] == 2
    assert table["helpful"]["gold"]["mean"] == pytest.approx((int(rep[0]) + int(rep[1])) / 2 + 0.5)


# ------------------------------------------------------------------ VAR vs DPO (+7.16%)

N = 60
GAIN_IDS = [f"q{i}" for i in range(N)]
SPLIT = split_prompts(GAIN_IDS)
SEL, REP = np.isin(GAIN_IDS, SPLIT.selection), np.isin(GAIN_IDS, SPLIT.reporting)
FAMILY_OF = {p: ("helpful" if i % 2 == 0 else "harmful") for i, p in enumerate(GAIN_IDS)}
HELPFUL = np.array([FAMILY_OF[p] == "helpful" for p in GAIN_IDS])


def gain_sweep(var_factor, dpo_level=(2.0, 1.0), noise=0.005, seeds=6, rng_seed=0):
    """DPO's best configuration scores dpo_level (helpful, harmful) per prompt, VAR's best var_factor ×
    that; each method's other configuration is 0.5 lower. Returns (ev, tables) with the best
    configurations' [seeds, N] gold matrices. Six seeds: each best is ranked on seeds 0, 2, 4 and
    reported on 1, 3, 5 (alignlab.analysis.replicates)."""
    rng = np.random.default_rng(rng_seed)
    level = np.where(HELPFUL, dpo_level[0], dpo_level[1])
    runs, tables = [], {}
    for method, factor in (("dpo", 1.0), ("var", var_factor)):
        for c, drop in enumerate((0.5, 0.0)):                  # c1 is the best
            gold = factor * level - drop + rng.normal(0, noise, (seeds, 1)) + rng.normal(0, noise, (seeds, N))
            runs += [replicate(method, c, s, GAIN_IDS, gold[s]) for s in range(seeds)]
            tables[method, c] = gold
    sft = run("sft", method="sft", prompt_id=GAIN_IDS, gold_score=level)
    return SweepEvidence(runs, sft, n_resamples=1000), tables


def hand_means(tables, mask=None):
    """The best configurations' reported means: over their reporting seeds (rows 1, 3, …; a lone seed
    reports itself) and the reporting prompts (within `mask`)."""
    rows = REP if mask is None else REP & mask

    def picked(matrix):
        return matrix[1::2] if len(matrix) > 1 else matrix
    return picked(tables["var", 1])[:, rows].mean(), picked(tables["dpo", 1])[:, rows].mean()


def test_the_two_decided_claims_by_hand():
    ev, t = gain_sweep(1.5)
    claims = decide(var_gain_claims(ev, FAMILY_OF))
    assert [c["claim"] for c in claims] == ["VAR's gold reward ≥ DPO's", "VAR's gold reward ≥ +7.16% over DPO's"]
    v, d = hand_means(t)
    difference, contrast = claims
    assert difference["value"] == pytest.approx(v - d)
    assert contrast["value"] == pytest.approx(v - 1.0716 * d)
    # DPO 2 / 1 on alternate prompts, VAR 1.5× that: the gain is 50% on every family and over all prompts.
    assert contrast["fieller"]["gain_pct"] == pytest.approx(100 * (v / d - 1)) == pytest.approx(50.0, abs=1.0)
    low, high = contrast["fieller"]["ci"]
    assert VAR_PAPER_GAIN_PCT < low < 50.0 < high and contrast["fieller"]["kind"] == "bounded"
    for c in claims:   # all reporting prompts, not the families apart
        assert c["null"] == [0.0, 0.0] and c["prompts"] == REP.sum() == len(SPLIT.reporting)
        assert c["verdict"] == "confirmed" and c["p_adjusted"] < 0.05
        assert c["runs"] == 24 and c["seeds"] == [0, 1, 2, 3, 4, 5]
        assert "var-beta1 (reported on seeds 1, 3, 5)" in c["detail"]
        assert "dpo-beta1 (reported on seeds 1, 3, 5)" in c["detail"]
    json.dumps(claims)


@pytest.mark.parametrize("factor, beats, paper_gain", [(1.03, "confirmed", "reversed"), (0.5, "reversed", "reversed"),
                                                      (1.5, "confirmed", "confirmed")])
def test_verdicts_of_the_difference_and_of_the_contrast(factor, beats, paper_gain):
    # Noise 0.005 on levels of 1–2: every true difference here is many se from 0. A gain of 3% lies
    # below the paper's 7.16%: "≥ +7.16%" is reversed while "≥ DPO" is confirmed.
    ev, t = gain_sweep(factor)
    difference, contrast = decide(var_gain_claims(ev, None))
    v, d = hand_means(t)
    assert contrast["value"] == pytest.approx(v - 1.0716 * d)
    assert contrast["fieller"]["gain_pct"] == pytest.approx(100 * (factor - 1), abs=1.0)
    assert (difference["verdict"], contrast["verdict"]) == (beats, paper_gain)


def test_a_negative_dpo_mean_leaves_the_percentage_untested_with_the_reason():
    # DPO −2 / −1 per family, VAR half of it: VAR is better, but a percentage of a negative mean says
    # nothing (the gold reward's zero is arbitrary).
    ev, t = gain_sweep(0.5, dpo_level=(-2.0, -1.0))
    difference, contrast = decide(var_gain_claims(ev, None))
    v, d = hand_means(t)
    assert difference["value"] == pytest.approx(v - d) and difference["verdict"] == "confirmed"
    assert contrast["verdict"] == "not tested" and contrast["p_adjusted"] is None
    assert "not significantly above 0" in contrast["detail"] and "arbitrary" in contrast["detail"]


def test_gain_claims_without_var_runs_are_not_tested():
    ev, _ = gain_sweep(1.5)
    runs = [r for c in ev.by_method["dpo"] for r in c.runs]
    claims = decide(var_gain_claims(SweepEvidence(runs, ev.sft, n_resamples=100), FAMILY_OF))
    assert len(claims) == 2
    assert all(c["verdict"] == "not tested" and c["value"] is None and "VAR" in c["detail"] for c in claims)


def test_one_seed_gains_are_inconclusive():
    # With one seed the seed level is unmeasured: DPO's mean has a prompt-level interval only, far
    # above 0, so the contrast is estimated but cannot be decided.
    ev, t = gain_sweep(1.5, seeds=1)
    difference, contrast = decide(var_gain_claims(ev, None))
    v, d = hand_means(t)
    assert contrast["value"] == pytest.approx(v - 1.0716 * d)
    for c in (difference, contrast):
        assert c["verdict"] == "inconclusive" and c["p_adjusted"] is None and "seeds" in c["detail"]


def test_descriptives_per_family_head_to_head_and_share_of_dpo_gain():
    ev, t = gain_sweep(1.5)
    described = var_vs_dpo_descriptives(ev, FAMILY_OF)
    assert described["configurations"] == {"var": "var-beta1", "dpo": "dpo-beta1"}
    assert list(described["gain_by_family"]) == ["all", "harmful", "helpful"]
    for family, mask in (("all", None), ("harmful", ~HELPFUL), ("helpful", HELPFUL)):
        v, d = hand_means(t, mask)
        gain = described["gain_by_family"][family]
        assert gain["gain_pct"] == pytest.approx(100 * (v / d - 1))
        assert gain["ci"][0] < gain["gain_pct"] < gain["ci"][1]
    # VAR's response beats DPO's on every prompt and seed pair (levels 3 / 1.5 against 2 / 1, noise 0.005).
    h2h = described["head_to_head"]
    assert (h2h["win"], h2h["tie"], h2h["loss"]) == (1.0, 0.0, 0.0) and h2h["prompts"] == REP.sum()
    # SFT scores the DPO level exactly (gain_sweep): DPO's gain over SFT is its noise alone, so
    # the share is unbounded; with SFT at half DPO's level it is (1.5 − 1)/(1 − 0.5) = 1.
    assert described["share_of_dpo_gain"]["ci"] is None
    sft = run("sft", method="sft", prompt_id=GAIN_IDS, gold_score=0.5 * np.where(HELPFUL, 2.0, 1.0))
    runs = [r for configs in ev.by_method.values() for c in configs for r in c.runs]
    share = var_vs_dpo_descriptives(SweepEvidence(runs, sft, n_resamples=300), None)["share_of_dpo_gain"]
    v, d = hand_means(t)
    s = 0.5 * np.where(HELPFUL, 2.0, 1.0)[REP].mean()
    assert share["value"] == pytest.approx((v - d) / (d - s)) == pytest.approx(1.0, abs=0.02)
    assert share["kind"] == "bounded" and share["ci"][0] < share["value"] < share["ci"][1]
    json.dumps(described)
    runs = [r for c in ev.by_method["dpo"] for r in c.runs]
    assert var_vs_dpo_descriptives(SweepEvidence(runs, ev.sft, n_resamples=100), None) is None


def paired_sweep(rng, var_mean, dpo_mean, seed_sd, n_prompts=60, seeds=3):
    """One configuration each of VAR and DPO, seeds × prompts gold = mean + prompt effect (shared,
    sd 0.5) + seed effect (sd seed_sd[method]) + response noise (sd 0.5)."""
    ids = [f"q{i}" for i in range(n_prompts)]
    prompt = rng.normal(0, 0.5, n_prompts)
    runs = []
    for method, mean in (("var", var_mean), ("dpo", dpo_mean)):
        gold = mean + prompt + rng.normal(0, seed_sd[method], (seeds, 1)) + rng.normal(0, 0.5, (seeds, n_prompts))
        runs += [replicate(method, 0, s, ids, gold[s]) for s in range(seeds)]
    return runs, run("sft", method="sft", prompt_id=ids, gold_score=prompt)


@pytest.mark.parametrize("seed_sd", [{"var": 0.2, "dpo": 0.2}, {"var": 0.02, "dpo": 0.23}])
def test_contrast_rejects_a_true_gain_of_exactly_7_16_percent_at_most_2_5_percent(seed_sd):
    # True means DPO 1, VAR 1.0716: the contrast's true value is 0, and "confirmed" (one-sided
    # rejection) must come at most 2.5% of the time. 600 sweeps: the Monte-Carlo se at 2.5% is 0.64%,
    # so the bound is 2.5% + 2 se = 3.8%. The second noise pattern is the (VAR's seeds 10×
    # quieter than DPO's), where the contrast's df are those of DPO's seeds alone.
    rng = np.random.default_rng(11)
    sweeps, rejected = 600, 0
    for i in range(sweeps):
        ev = SweepEvidence(*paired_sweep(rng, 1.0716, 1.0, seed_sd), n_resamples=200, seed=i)
        contrast = var_gain_claims(ev)[1]
        rejected += contrast["verdict"] != "not tested" and contrast["p_value"] < 0.05 and contrast["value"] > 0
    assert rejected / sweeps <= 0.025 + 2 * math.sqrt(0.025 * 0.975 / sweeps), rejected / sweeps


def test_no_gain_over_a_dpo_mean_near_zero_is_not_tested():
    # True means 0 for both: DPO's mean is significantly above 0 in at most 2.5% of sweeps; the claim
    # is "not tested" otherwise and never confirmed. 200 sweeps: 2.5% + 2 se = 4.7%.
    rng = np.random.default_rng(12)
    sweeps, verdicts = 200, []
    for i in range(sweeps):
        ev = SweepEvidence(*paired_sweep(rng, 0.0, 0.0, {"var": 0.2, "dpo": 0.2}), n_resamples=200, seed=i)
        verdicts.append(decide(var_gain_claims(ev))[1]["verdict"])
    assert verdicts.count("not tested") / sweeps >= 1 - 0.047 and "confirmed" not in verdicts


def test_a_dpo_mean_of_exactly_zero_is_not_tested_and_leaves_the_correction_alone():
    ev, _ = gain_sweep(1.5, dpo_level=(0.0, 0.0), noise=0.0)
    difference, contrast = decide(var_gain_claims(ev, None))
    assert contrast["verdict"] == "not tested" and contrast["value"] is None and contrast["p_adjusted"] is None
    assert "not significantly above 0" in contrast["detail"] and "unbounded" in contrast["detail"]
    json.dumps(contrast, allow_nan=False)


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


def test_race_not_tested_when_grpo_does_not_improve():
    grpo = [point(100, 100, -0.5), point(200, 200, 0.0)]
    var = [point(10, 10, 1.0)]
    r = convergence_race({"var": var, "grpo": grpo}, START)
    assert r["verdict"] == "not tested" and "GRPO did not improve" in r["reason"]
    assert r["speedup"] is None and r["samples_ratio"] is None
    assert r["methods"]["var"]["seconds_to_target"] is None
    assert r["methods"]["var"]["final_reward"] == pytest.approx(1.0)


def test_race_reversed_when_var_never_reaches_the_target():
    var = [point(10, 100, 0.5), point(20, 200, 1.0)]
    r = convergence_race({"var": var, "grpo": GRPO}, START)
    assert r["methods"]["var"]["seconds_to_target"] is None
    assert r["speedup"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert r["verdict"] == "reversed"


def test_race_inconclusive_when_var_is_faster_but_not_five_times():
    var = [point(100, 1000, 1.2), point(200, 2000, 2.4)]           # 100 + 0.6/1.2·100 = 150 s
    r = convergence_race({"var": var, "grpo": GRPO}, START)
    assert r["speedup"]["value"] == pytest.approx(280 / 150)
    assert r["verdict"] == "inconclusive"


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
