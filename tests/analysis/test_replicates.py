"""Configurations with replicate seeds and the evidence of a sweep (alignlab.analysis.replicates)
against numbers worked out by hand on small tables."""

import numpy as np
import pytest
from run_records import replicate, run

from alignlab.analysis import Configuration, SweepEvidence, group_configurations
from alignlab.analysis.replicates import OUTCOMES, ranking_seeds, reporting_seeds
from alignlab.evidence import split_prompts

# Six prompts. The rule (sha256 order, tests/evidence/test_split.py) puts p0, p2, p3 in the selection
# half and p1, p4, p5 in the reporting half.
IDS = ["p0", "p1", "p2", "p3", "p4", "p5"]
SELECTION, REPORTING = ("p0", "p2", "p3"), ("p1", "p4", "p5")


def test_the_six_prompts_split_as_the_tables_below_assume():
    split = split_prompts(IDS)
    assert (split.selection, split.reporting) == (SELECTION, REPORTING)


# ------------------------------------------------------------------ grouping runs into configurations

def test_group_configurations_groups_runs_that_differ_only_by_seed():
    runs = [run("dpo-b0.1-lr5e-4-s2", method="dpo", params={"beta": 0.1, "learning_rate": 5e-4, "seed": 2}),
            run("dpo-b0.1-lr5e-4-s10", method="dpo", params={"beta": 0.1, "learning_rate": 5e-4, "seed": 10}),
            run("dpo-b0.2-lr5e-4-s0", method="dpo", params={"beta": 0.2, "learning_rate": 5e-4, "seed": 0}),
            run("dpo-b0.1-lr5e-4-s1", method="dpo", params={"beta": 0.1, "learning_rate": 5e-4, "seed": 1}),
            # Same hyper-parameters, another method: another configuration.
            run("simpo-b0.1-lr5e-4-s1", method="simpo", params={"beta": 0.1, "learning_rate": 5e-4, "seed": 1}),
            # No seed recorded: a configuration of one run.
            run("simpo-gamma1", method="simpo", params={"gamma": 1})]
    by_method = group_configurations(runs)
    assert list(by_method) == ["dpo", "simpo"]
    # Named by the parameters that differ between the method's configurations, and the learning rate.
    dpo = {c.name: c for c in by_method["dpo"]}
    assert sorted(dpo) == ["dpo-beta0.1-lr0.0005", "dpo-beta0.2-lr0.0005"]
    first = dpo["dpo-beta0.1-lr0.0005"]
    assert first.seeds == [1, 2, 10]                       # numeric order, not "1", "10", "2"
    assert [r.name for r in first.runs] == ["dpo-b0.1-lr5e-4-s1", "dpo-b0.1-lr5e-4-s2", "dpo-b0.1-lr5e-4-s10"]
    assert first.params == {"beta": 0.1, "learning_rate": 5e-4} and first.method == "dpo"
    assert dpo["dpo-beta0.2-lr0.0005"].seeds == [0]
    assert sorted(c.name for c in by_method["simpo"]) == ["simpo-beta0.1-lr0.0005", "simpo-gamma1"]
    assert next(c for c in by_method["simpo"] if c.name == "simpo-gamma1").seeds == [None]


def test_runs_are_grouped_by_their_parameters_whatever_their_names():
    # Names that do not end in "-s<seed>", and one that ends in another configuration's seed.
    common = {"learning_rate": 1e-3, "epochs": 1}
    runs = [run("first", params={"beta": 0.1, **common, "seed": 7}),
            run("third", params={"beta": 0.3, **common, "seed": 7}),
            run("dpo-beta0.1-lr0.001-s8", params={"beta": 0.3, **common, "seed": 8}),
            run("second", params={"beta": 0.1, **common, "seed": 8})]
    configs = {c.name: c for c in group_configurations(runs)["dpo"]}
    assert sorted(configs) == ["dpo-beta0.1-lr0.001", "dpo-beta0.3-lr0.001"]  # epochs equal: not named
    assert [r.name for r in configs["dpo-beta0.1-lr0.001"].runs] == ["first", "second"]
    assert [r.name for r in configs["dpo-beta0.3-lr0.001"].runs] == ["third", "dpo-beta0.1-lr0.001-s8"]
    assert configs["dpo-beta0.3-lr0.001"].seeds == [7, 8]


# ------------------------------------------------------------------ scores, reported values, noise floor

# DPO c0, three seeds, gold by prompt p0 … p5:
#   s0 [1, 2, 3, 4, 5, 6]  selection (p0 p2 p3) 1 3 4 → 8/3   reporting (p1 p4 p5) 2 5 6 → 13/3
#   s1 [2, 2, 2, 2, 2, 2]                       2            → 2                     → 2
#   s2 [0, 1, 0, 1, 0, 1]                       0 0 1 → 1/3                  1 0 1 → 2/3
#   score on the ranking seeds s0, s2: (8/3 + 1/3)/2 = 3/2; reported over every seed (13/3 + 2 + 2/3)/3
#   = 7/3, and as a pick on its reporting seed s1: 2; sample variance of 13/3, 2, 2/3:
#   (2² + (1/3)² + (5/3)²)/2 = 31/9.
# DPO c1, two seeds:
#   s0 [3, 1, 3, 3, 1, 1]  selection 3 → 3; reporting 1 → 1
#   s1 [1, 3, 1, 1, 3, 5]  selection 1 → 1; reporting 3 3 5 → 11/3
#   score on s0: 3 (the best: s0's luck on the selection half ranks it, and does not report it);
#   reported (1 + 11/3)/2 = 7/3, as a pick on s1: 11/3; sample variance (8/3)²/2 = 32/9.
# noise floor of DPO: √((31/9 + 32/9)/2) = √3.5. SimPO has one seed (and one configuration): no noise
# floor, and a pick of it reports that seed.
DPO_C0 = [[1, 2, 3, 4, 5, 6], [2, 2, 2, 2, 2, 2], [0, 1, 0, 1, 0, 1]]
DPO_C1 = [[3, 1, 3, 3, 1, 1], [1, 3, 1, 1, 3, 5]]


def hand_sweep(reverse_one=False):
    runs = [replicate("dpo", 0, s, IDS, g) for s, g in enumerate(DPO_C0)]
    runs += [replicate("dpo", 1, s, IDS, g) for s, g in enumerate(DPO_C1)]
    runs += [replicate("simpo", 0, 0, IDS, [9, 9, 9, 9, 9, 9])]
    if reverse_one:  # the same scores, listed in another prompt order: joined by id, nothing changes
        runs[1] = replicate("dpo", 0, 1, IDS[::-1], DPO_C0[1][::-1])
        runs[2] = replicate("dpo", 0, 2, IDS[::-1], DPO_C0[2][::-1])
    sft = run("sft", method="sft", prompt_id=IDS, gold_score=[0, 1, 0, 0, 2, 3])
    return runs[::-1], sft  # seed order is restored by grouping


@pytest.mark.parametrize("reverse_one", [False, True])
def test_scores_on_the_selection_half_and_reported_values_on_the_reporting_half(reverse_one):
    ev = SweepEvidence(*hand_sweep(reverse_one), n_resamples=200)
    assert ev.reporting == REPORTING
    c0, c1 = sorted(ev.by_method["dpo"], key=lambda c: c.name)
    assert (c0.name, c1.name) == ("dpo-beta0", "dpo-beta1")
    assert c0.seeds == [0, 1, 2] and c1.seeds == [0, 1]
    assert c0.score == pytest.approx(3 / 2) and c1.score == pytest.approx(3.0)
    assert ev.reported_value(c0) == pytest.approx(7 / 3) and ev.reported_value(c1) == pytest.approx(7 / 3)
    assert ev.reported(c0).shape == (3, 3)
    assert ev.reported(c0)[0].tolist() == [2, 5, 6]
    assert ev.mean(c0).value == pytest.approx(7 / 3)
    assert ev.mean(c0).configs == {"dpo-beta0": 3} and ev.mean(c0).n_prompts == 3
    assert ev.reported_value_of_baseline() == pytest.approx(2.0)             # SFT 1, 2, 3 on p1 p4 p5
    assert ev.baseline_mean().value == pytest.approx(2.0)
    assert ev.noise_floor("dpo") == pytest.approx(np.sqrt(3.5))
    assert ev.noise_floor("simpo") is None
    assert ev.noise_floor("ln-dpo") is None                                 # no runs at all


def test_a_pick_reports_on_the_seeds_that_did_not_rank_it():
    ev = SweepEvidence(*hand_sweep(), n_resamples=200)
    c0, c1 = sorted(ev.by_method["dpo"], key=lambda c: c.name)
    best = max(ev.by_method["dpo"], key=lambda c: c.score)
    assert best is c1
    picked = ev.picked(c1)
    assert picked is ev.picked(c1) and picked.name == "dpo-beta1" and picked.seeds == [1]
    assert ev.reported(picked).tolist() == [[3, 3, 5]]
    assert ev.mean(picked).value == pytest.approx(11 / 3) and ev.mean(picked).configs == {"dpo-beta1": 1}
    assert ev.reported_value(ev.picked(c0)) == pytest.approx(2.0) and ev.picked(c0).seeds == [1]
    # The whole configuration is unchanged beside its pick (both share a name).
    assert ev.mean(c1).value == pytest.approx(7 / 3) and ev.mean(c1).configs == {"dpo-beta1": 2}
    simpo = ev.by_method["simpo"][0]
    assert ev.picked(simpo) is simpo                    # one configuration: nothing was picked


@pytest.mark.parametrize("n, ranking, reporting", [(1, [0], [0]), (2, [0], [1]), (3, [0, 2], [1]),
                                                    (4, [0, 2], [1, 3]), (5, [0, 2, 4], [1, 3]),
                                                    (6, [0, 2, 4], [1, 3, 5])])
def test_seeds_alternate_between_ranking_and_reporting(n, ranking, reporting):
    assert ranking_seeds(n) == ranking and reporting_seeds(n) == reporting


def test_a_lucky_seed_that_wins_the_pick_does_not_report():
    # Two configurations, four seeds, the same level everywhere but one seed effect: c1's seed 0
    # (a ranking seed) is 1.0 better on every prompt, c0's seed 1 (a reporting seed) 0.5 better.
    # c1 wins the pick on the selection half (its ranking seeds 0, 2: (1 + 0)/2 = 0.5 against 0), and
    # is reported on seeds 1 and 3: 0, not the 0.25 of all four seeds' reporting-half mean.
    runs = [replicate("dpo", c, s, IDS, np.full(6, (1.0 if (c, s) == (1, 0) else 0.0)
                                             + (0.5 if (c, s) == (0, 1) else 0.0))) for c in range(2) for s in range(4)]
    ev = SweepEvidence(runs, None, n_resamples=50)
    c0, c1 = sorted(ev.by_method["dpo"], key=lambda c: c.name)
    assert (c0.score, c1.score) == (0.0, 0.5)
    assert ev.reported_value(c1) == pytest.approx(0.25)
    assert ev.reported_value(ev.picked(c1)) == 0.0 and ev.picked(c1).seeds == [1, 3]
    assert ev.reported_value(ev.picked(c0)) == pytest.approx(0.25)  # c0's seed 1 reports


def test_split_comes_from_the_first_run_without_sft():
    runs, _ = hand_sweep()
    ev = SweepEvidence(runs, None, n_resamples=50)
    assert ev.reporting == split_prompts(runs[0].samples["prompt_id"]).reporting == REPORTING


def test_a_run_missing_a_reporting_prompt_is_an_error():
    runs, sft = hand_sweep()
    runs.append(replicate("var", 0, 0, IDS[:-1], [1, 1, 1, 1, 1]))        # lacks p5
    ev = SweepEvidence(runs, sft, n_resamples=50)  # p5 reports: the selection half is complete
    with pytest.raises(ValueError, match="p5"):
        ev.reported(ev.by_method["var"][0])


# ------------------------------------------------------------------ head-to-head win shares

# Reporting prompts p1 p4 p5 (selection prompts score 0 and never count):
#   A  a0 [1, 2, 3]   a1 [2, 2, 0]       B  b0 [1, 3, 0]   b1 [0, 1, 3]       SFT [2, 2, 2]
# A vs B, 4 seed pairs × 3 prompts = 12 comparisons:
#   (a0,b0) T L W   (a0,b1) W W T   (a1,b0) W L T   (a1,b1) W W L  → A wins 6, ties 3, B wins 3
# A vs SFT: a0 L T W, a1 T T L → A wins 1/6, ties 3/6, SFT wins 2/6
# B vs SFT: b0 L W L, b1 L L W → B wins 2/6, no ties, SFT wins 4/6
def at_reporting(values):
    full = dict.fromkeys(IDS, 0.0)
    full.update(zip(REPORTING, values))
    return [full[p] for p in IDS]


def win_sweep():
    runs = [replicate("dpo", 0, 0, IDS, at_reporting([1, 2, 3]), chosen_score=at_reporting([1, 1, 5])),
            replicate("dpo", 0, 1, IDS, at_reporting([2, 2, 0]), chosen_score=at_reporting([2, 2, 2])),
            replicate("simpo", 0, 0, IDS, at_reporting([1, 3, 0])),
            replicate("simpo", 0, 1, IDS, at_reporting([0, 1, 3]))]
    sft = run("sft", method="sft", prompt_id=IDS, gold_score=at_reporting([2, 2, 2]))
    return SweepEvidence(runs, sft, n_resamples=500)


def test_win_matrix_by_hand():
    ev = win_sweep()
    a, b = ev.by_method["dpo"][0], ev.by_method["simpo"][0]
    m = ev.win_matrix({"A": a, "B": b, "SFT": None})
    assert m["names"] == ["A", "B", "SFT"] and m["prompts"] == 3
    rate, tie = np.array(m["rate"], dtype=float), np.array(m["tie"], dtype=float)
    expected_rate = [[np.nan, 6 / 12, 1 / 6], [3 / 12, np.nan, 2 / 6], [2 / 6, 4 / 6, np.nan]]
    expected_tie = [[np.nan, 3 / 12, 3 / 6], [3 / 12, np.nan, 0], [3 / 6, 0, np.nan]]
    assert np.allclose(rate, expected_rate, equal_nan=True)
    assert np.allclose(tie, expected_tie, equal_nan=True)
    for i in range(3):
        assert m["rate"][i][i] is None and m["ci_low"][i][i] is None
        for j in range(3):
            if i != j:
                assert rate[i, j] + tie[i, j] + rate[j, i] == pytest.approx(1.0)
                assert 0 <= m["ci_low"][i][j] <= rate[i, j] <= m["ci_high"][i][j] <= 1


def test_win_share_resamples_each_models_seeds_and_the_prompts_by_hand():
    # A vs B (table above). A's seeds win 3/6 each: no seed-level variance. B's seeds lose 2/6 (b0) and
    # 4/6 (b1) of theirs: s² = (1/3)²/2 = 1/18, over 2 seeds 1/36. Per reporting prompt the win share over
    # the 4 seed pairs is 3/4 (p1), 2/4 (p4), 1/4 (p5): a mean of 3 prompts varies as their population
    # variance 1/24 over 3 = 1/72.
    ev = win_sweep()
    a, b = ev.by_method["dpo"][0], ev.by_method["simpo"][0]
    ev = SweepEvidence([*a.runs, *b.runs], ev.sft, n_resamples=20000, seed=1)
    a, b = ev.by_method["dpo"][0], ev.by_method["simpo"][0]
    share = ev.win_share(a, b)
    assert share.value == pytest.approx(6 / 12)
    # Both models were trained on seeds 0 and 1: drawn jointly, one unit of 2 seed values.
    assert share.seed_units == [(pytest.approx(1 / 36), 1, True)]
    assert np.var(share.seeds) == pytest.approx(1 / 36, rel=0.05)
    assert np.var(share.prompts) == pytest.approx(1 / 72, rel=0.05)
    # The tie share is a share like the wins: 3 of 12.
    assert ev.win_share(a, b, np.equal).value == pytest.approx(3 / 12)


def test_win_matrix_ci_of_a_model_that_always_wins_is_the_exact_binomial_bound():
    ev = win_sweep()
    better = replicate("var", 0, 0, IDS, [10] * 6)
    better2 = replicate("var", 0, 1, IDS, [11] * 6)
    ev = SweepEvidence([*(r for c in ev.by_method.values() for cfg in c for r in cfg.runs), better, better2],
                       ev.sft, n_resamples=300)
    m = ev.win_matrix({"VAR": ev.by_method["var"][0], "SFT": None})
    # A share of exactly 1 on 3 reporting prompts: the one-sided Clopper–Pearson bound for 3 of 3 trials,
    # 0.025^(1/3) = 0.292, not the point 1 that "no resample moved" would suggest; and 0 of 3 mirrors it.
    assert m["rate"][0][1] == 1.0 and m["ci_high"][0][1] == 1.0
    assert m["ci_low"][0][1] == pytest.approx(0.025 ** (1 / 3))
    assert m["rate"][1][0] == 0.0 and m["tie"][0][1] == 0.0
    assert (m["ci_low"][1][0], m["ci_high"][1][0]) == (0.0, pytest.approx(1 - 0.025 ** (1 / 3)))


def test_outcome_columns_against_the_chosen_response():
    ev = win_sweep()
    a = ev.by_method["dpo"][0]
    # gold vs chosen on p1 p4 p5: a0 1v1 T, 2v1 W, 3v5 L; a1 2v2 T, 2v2 T, 0v2 L.
    assert ev.reported(a, "win_vs_chosen").tolist() == [[0, 1, 0], [0, 0, 0]]
    assert ev.reported(a, "tie_vs_chosen").tolist() == [[1, 0, 0], [1, 1, 0]]
    assert ev.reported_value(a, "win_vs_chosen") == pytest.approx(1 / 6)
    assert ev.reported_value(a, "tie_vs_chosen") == pytest.approx(3 / 6)
    assert a.has("win_vs_chosen") and a.has("gold_score")
    assert not a.has("win_vs_sft") and not a.has("length")            # no sft_score, no length column
    assert not ev.by_method["simpo"][0].has("tie_vs_chosen")           # SimPO runs lack chosen_score
    assert set(OUTCOMES) == {"win_vs_chosen", "tie_vs_chosen", "win_vs_sft", "tie_vs_sft"}


def test_configuration_matrix_joins_by_prompt_id():
    r = replicate("dpo", 0, 0, ["b", "a", "c"], [2.0, 1.0, 3.0], length=[20, 10, 30])
    config = Configuration("dpo-c0", "dpo", {"beta": 0}, [r])
    assert config.matrix("gold_score", ["a", "c"]).tolist() == [[1.0, 3.0]]
    assert config.matrix("length", ["c", "b"]).tolist() == [[30, 20]]


# ------------------------------------------------------------------ runs without per-sample results

def test_runs_without_per_sample_gold_are_left_out_and_named():
    runs, sft = hand_sweep()
    runs.append(run("var-c0-s0", 1.0, "var", {"beta": 0, "seed": 0}))          # metrics only
    ev = SweepEvidence(runs, sft, n_resamples=50)
    assert ev.unusable == ["var-c0-s0"] and "var" not in ev.by_method
    assert sorted(ev.by_method) == ["dpo", "simpo"]


def test_a_sweep_without_per_sample_results_has_nothing_to_split_and_tests_nothing():
    from alignlab.analysis import decide, hitchhiker_claims
    runs = [run("dpo-c0-s0", 1.0, "dpo", {"seed": 0}), run("ln-dpo-c0-s0", 2.0, "ln-dpo", {"seed": 0})]
    ev = SweepEvidence(runs, run("sft", 0.5, "sft"), n_resamples=50)
    assert ev.split is None and ev.by_method == {} and ev.sft is None
    assert ev.unusable == ["dpo-c0-s0", "ln-dpo-c0-s0"]
    claims = decide(hitchhiker_claims(ev))
    assert claims and all(c["verdict"] == "not tested" and c["value"] is None for c in claims)


# ------------------------------------------------------------------ in distribution vs OOD

def test_in_distribution_gap_by_hand_with_seeds_drawn_alike_on_both_prompt_sets():
    # Seed offsets −0.5, 0, +0.5 shift a model on every prompt of both sets: the gap (2 − 1 = 1 on
    # every prompt) does not depend on them, so drawing the seeds alike leaves no spread at all.
    indist_ids = [f"q{i}" for i in range(8)]
    runs = []
    for seed, offset in enumerate((-0.5, 0.0, 0.5)):
        r = replicate("dpo", 0, seed, IDS, np.full(6, 1.0 + offset))
        r.indist = {"prompt_id": np.array(indist_ids), "gold_score": np.full(8, 2.0 + offset)}
        runs.append(r)
    sft = run("sft", method="sft", prompt_id=IDS, gold_score=np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]))
    sft.indist = {"prompt_id": np.array(indist_ids), "gold_score": np.arange(8, dtype=np.float64)}
    ev = SweepEvidence(runs, sft, n_resamples=400)
    (config,) = ev.by_method["dpo"]
    gap = ev.in_distribution_gap(config)
    assert gap.value == pytest.approx(1.0)
    assert np.allclose(gap.full, 1.0) and gap.n_prompts == 3 + 8
    # The baseline: in-distribution mean 3.5, reporting-half mean (p1, p4, p5) = (1 + 4 + 5)/3.
    baseline = ev.in_distribution_gap(None)
    assert baseline.value == pytest.approx(3.5 - 10 / 3)
    # Both prompt sets vary: the spread is that of two independent means.
    expected_variance = np.var(np.arange(8), ddof=0) / 8 + np.var([1.0, 4.0, 5.0], ddof=0) / 3
    assert np.var(baseline.full) == pytest.approx(expected_variance, rel=0.2)


def test_no_in_distribution_evaluation_gives_no_gap():
    runs = [replicate("dpo", 0, s, IDS, np.ones(6)) for s in range(2)]
    ev = SweepEvidence(runs, None, n_resamples=50)
    assert ev.in_distribution_gap(ev.by_method["dpo"][0]) is None


# ------------------------------------------------------------------ a selection set of the user's

def test_a_separate_selection_set_picks_and_every_test_prompt_reports():
    # On the selection set c0 is better (1.0 vs 0.0); on the test prompts c1 is (2.0 vs 0.0).
    own = [f"s{i}" for i in range(4)]
    runs = []
    for config, (picked, tested) in enumerate(((1.0, 0.0), (0.0, 2.0))):
        for seed in range(2):
            r = replicate("dpo", config, seed, IDS, np.full(6, tested))
            r.selection = {"prompt_id": np.array(own), "gold_score": np.full(4, picked)}
            runs.append(r)
    ev = SweepEvidence(runs, None, n_resamples=50)
    assert ev.split.selection == tuple(own) and ev.split.reporting == tuple(IDS)
    assert "separate selection set" in ev.split.describe()["rule"]
    best = max(ev.by_method["dpo"], key=lambda c: c.score)
    assert best.name == "dpo-beta0" and ev.reported_value(best) == 0.0  # picked on its own prompts, judged on all
    # The seeds are split as on the halves: seed 0 ranked it on the selection set, seed 1 reports.
    assert ev.picked(best).seeds == [1] and ev.reported(ev.picked(best)).shape == (1, 6)
    # One run without the selection evaluation: back to the halves of the test prompts.
    runs[0].selection = {}
    assert SweepEvidence(runs, None, n_resamples=50).split.reporting == REPORTING
