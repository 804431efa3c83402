"""Claim families (Holm within each) and what would settle an inconclusive claim, against hand-worked
numbers and a simulation with a known truth."""

import math

import numpy as np
import pytest

from alignlab.analysis import decide, seeds_for_power
from alignlab.analysis.claims import declare_primary, to_settle_text


def claim(title, p_value, value=1.0, family="secondary", v_seeds=0.01, v_prompts=0.001):
    return {"claim": title, "family": family, "verdict": None, "value": value, "p_value": p_value,
            "p_adjusted": None, "null": [0.0, 0.0], "prompts": 100, "to_settle": None,
            "variance": {"seeds": v_seeds, "prompts": v_prompts, "seeds_per_configuration": 3}}


def test_holm_runs_within_each_family_apart():
    # Primary p 0.01, 0.04: Holm over 2 gives 0.02 and 0.04, both below 5%. Secondary p 0.02, 0.03,
    # 0.2: Holm over 3 gives 0.06, 0.06, 0.2, none below. All five together would give 0.05 for the
    # smallest (0.01 · 5): nothing confirmed, which is the cost the primary family is declared to avoid.
    claims = [claim("a", 0.01, family="primary"), claim("b", 0.04, family="primary"),
              claim("c", 0.02), claim("d", 0.03), claim("e", 0.2, value=-1.0)]
    decided = {c["claim"]: c for c in decide(claims)}
    assert [decided[t]["p_adjusted"] for t in "abcde"] == pytest.approx([0.02, 0.04, 0.06, 0.06, 0.2])
    assert [decided[t]["verdict"] for t in "abcde"] == ["confirmed", "confirmed"] + ["inconclusive"] * 3
    # The open ones say what would settle them, at their family's Bonferroni level 5%/3.
    assert decided["c"]["to_settle"]["level"] == pytest.approx(0.05 / 3)
    assert decided["a"]["to_settle"] is None


def test_declaring_the_primary_family_names_unknown_titles():
    claims = [claim("x", 0.5), claim("y", 0.5)]
    assert [c["family"] for c in declare_primary(claims, ["y"])] == ["secondary", "primary"]
    with pytest.raises(ValueError, match="no claim 'z' in this report; its claims are: x; y"):
        declare_primary(claims, ["z"])


def test_seeds_for_power_matches_the_hand_computed_normal_approximation():
    # δ = 0.5, level 0.05/2: z(1 − 0.0125) = 2.241403, z(0.8) = 0.841621, so the estimate's variance
    # must fall to (0.5 / 3.083024)² = 0.026302. Now v_seeds = 0.04 at 3 seeds, v_prompts = 0.01 at 100
    # prompts: seeds need 0.04 · 3/S ≤ 0.016302, S ≥ 7.36 → 8; prompts alone cannot (0.04 ≥ 0.026302);
    # both scaled by (0.05 / 0.026302) = 1.901 → 3 · 1.901 = 5.70 → 6 seeds and 190.1 → 191 prompts.
    needed = seeds_for_power(0.5, 0.04, 0.01, seeds=3, prompts=100, level=0.025)
    assert needed == {"seeds_per_configuration": 8, "prompts": None, "both": {"seeds_per_configuration": 6,
                                                                                "prompts": 191}}
    # A negative effect needs the same; no effect cannot be sized; an effect already powered needs no more.
    assert seeds_for_power(-0.5, 0.04, 0.01, 3, 100, 0.025) == needed
    assert seeds_for_power(0.0, 0.04, 0.01, 3, 100, 0.025)["seeds_per_configuration"] is None
    assert seeds_for_power(5.0, 0.04, 0.01, 3, 100, 0.025)["seeds_per_configuration"] == 3


def test_the_text_says_what_would_settle_a_claim():
    (open_claim,) = decide([claim("a", 0.3, value=0.5, v_seeds=0.04, v_prompts=0.01)])
    # One claim, level 5%: (0.5 / (1.959964 + 0.841621))² = 0.031852; 0.04 · 3 / (0.031852 − 0.01) = 5.49 → 6.
    assert open_claim["to_settle"]["seeds_per_configuration"] == 6
    assert "about 6 seeds per configuration" in to_settle_text(open_claim)
    # Detectable now: 2.801585 · √(0.04 + 0.01) = 0.6265.
    assert open_claim["to_settle"]["detectable_effect"] == pytest.approx(0.6265, abs=1e-4)
    assert "detect an effect of about 0.626 with 80% power" in to_settle_text(open_claim)
    (null_claim,) = decide([claim("b", 1.0, value=0.0)])
    assert "no effect observed" in to_settle_text(null_claim)
    # A tiny effect: 0.01 needs (0.01 / 2.801585)² = 1.27e-5 of variance, neither component alone gets
    # there and both together need 0.05 / 1.27e-5 ≈ 3,900 times the data: no count is given.
    (tiny,) = decide([claim("c", 0.9, value=0.01, v_seeds=0.04, v_prompts=0.01)])
    assert tiny["to_settle"]["both"]["seeds_per_configuration"] > 10_000
    assert "more than 10× the seeds and prompts there are" in to_settle_text(tiny)
    assert "seeds per configuration" not in to_settle_text(tiny)


def test_the_seeds_it_asks_for_give_80_percent_power_in_simulation():
    """Two methods, one configuration each: a model's mean over the prompts is its method's mean + a seed
    effect (sd SEED_SD) + the prompts' interaction with the method (sd TAU per prompt, fixed per method),
    so the difference of the two means has variance 2·SEED_SD²/S + 2·TAU²/P — the components the
    function scales. At the seeds it asks for, a two-sided z-test at the level rejects about 80% of the
    time (4,000 draws: Monte-Carlo se 0.0063; ceil() adds up to a few points)."""
    seed_sd, tau, prompts, seeds_now, effect, level = 0.2, 0.5, 200, 3, 0.25, 0.05
    needed = seeds_for_power(effect, 2 * seed_sd ** 2 / seeds_now, 2 * tau ** 2 / prompts, seeds_now, prompts,
                             level)["seeds_per_configuration"]
    rng = np.random.default_rng(0)
    draws = 4000
    sd = math.sqrt(2 * seed_sd ** 2 / needed + 2 * tau ** 2 / prompts)
    interaction = rng.normal(0, tau, (draws, 2, prompts)).mean(axis=2)     # [draws, method]
    seed_means = rng.normal(0, seed_sd, (draws, 2, needed)).mean(axis=2)
    difference = effect + (interaction + seed_means) @ np.array([1.0, -1.0])
    power = np.mean(np.abs(difference) / sd > 1.959964)
    assert 0.8 - 3 * 0.0063 <= power <= 0.87, (needed, power)


def test_with_few_degrees_of_freedom_it_asks_for_the_seeds_a_t_test_needs():
    # 3 seeds and 2 df now: at S seeds the df are 2·(S − 1)/2 = S − 1. Worked out with scipy: effect
    # 0.5, v_seeds 0.04 (at 3 seeds), v_prompts 0.01, level 2.5%: S = 4 gives var 0.04, sd 0.2, and needs
    # t_3(0.9875) + z(0.8) = 4.177 + 0.842 = 5.02 sd's (1.004 > 0.5); S = 8: var 0.025, sd 0.158,
    # t_7(0.9875) + 0.842 = 2.841 + 0.842 = 3.683 → 0.582 > 0.5; S = 11: var 0.0209, sd 0.1446,
    # t_10 quantile 2.634 + 0.842 = 3.476 → 0.5027 > 0.5; S = 12: var 0.02, sd 0.1414, t_11 2.593 + 0.842
    # = 3.435 → 0.4858 ≤ 0.5. The normal version needs (0.5 / (2.241 + 0.842))² = 0.0263 of variance:
    # 0.12/S ≤ 0.0163 at S = 8.
    from scipy.stats import norm, t

    def enough(s):
        return (t.ppf(1 - 0.025 / 2, s - 1) + norm.ppf(0.8)) * math.sqrt(0.04 * 3 / s + 0.01) <= 0.5

    assert [s for s in range(3, 20) if enough(s)][0] == 12
    assert seeds_for_power(0.5, 0.04, 0.01, 3, 100, 0.025, df=2)["seeds_per_configuration"] == 12
    assert seeds_for_power(0.5, 0.04, 0.01, 3, 100, 0.025)["seeds_per_configuration"] == 8
