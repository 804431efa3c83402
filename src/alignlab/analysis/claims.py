"""Claim records, their families, the decision on them, and what would settle an open one.

A claim's statistic is oriented so that a value above its null region supports it (the point 0 for
every claim the report makes: the VAR paper's +7.16% is a contrast). Each tested claim carries the
estimate of alignlab.evidence.bootstrap (value, 95% CI, p-value), what stands behind it (the training
seeds per configuration, the runs of the compared methods and the reporting prompts) and, for a
bootstrap estimate, the two variance components: v_seeds, the variance of the seeds-only resamples
(training noise), and v_prompts, that of the prompts-only resamples (which prompts the test set holds).

Families. Every claim belongs to one family: "primary" (a few claims declared before the data: the
papers' headline claims, or those the user names) or "secondary" (the rest). `decide` applies Holm's
correction within each family separately and sets the verdicts (alignlab.evidence.testing), so each
family's family-wise error rate is 5%; a reader who looks at the primary family alone pays for its
few claims only. A claim on configurations with fewer than 2 seeds keeps its estimate but cannot be
decided: training noise is unmeasured, so it is inconclusive and outside the correction.

What would settle an inconclusive claim (`seeds_for_power`): the seeds per configuration (prompts
held) and, apart, the reporting prompts (seeds held) — or, where neither alone can, both scaled
together — at which a test at the family's Bonferroni level
α/m (m the family's decidable claims: the level Holm applies to the first of them) has 80% power
when the true effect is the observed one. It scales the components as the bootstrap measures them,
    var(S, P) = v_seeds · S₀/S + v_prompts · P₀/P      (S₀ seeds and P₀ prompts now),
and asks for |δ| / √var ≥ t_df(S)(1 − α/2m) + z(0.80), δ the estimate's distance from the null region
and t the Student quantile at the degrees of freedom the claim would have with S seeds, its df now
scaled by (S − 1)/(S₀ − 1) (with 2–3 seeds the quantile, not the variance, keeps a claim open): the
seed × prompt interaction, which both components hold, is counted twice (a little conservative), the
power term is a normal approximation, and the observed effect is itself noisy (a winner's curse when
it was picked for being large). Beside it, the detectable effect: (t_df(1 − α/2m) + z(0.80)) ·
√(v_seeds + v_prompts), the effect the data as they are would detect with 80% power.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from scipy.stats import t as student_t

from alignlab.evidence import ALPHA, CORRECTION, Estimate, Resampled, estimate, holm, verdict
from alignlab.evidence.bootstrap import distance_from_null, resample_variance

FAMILIES = ("primary", "secondary")
POWER = 0.80
TOO_MUCH_MORE = 10  # beyond this many times the data, what would settle a claim is not worth a number
_z = NormalDist().inv_cdf  # the standard normal quantile


def untested(claim: str, statistic: str, why: str, runs: int = 0) -> dict:
    """A claim the sweep cannot test (no runs of a method, a column absent): verdict "not tested"."""
    return {"claim": claim, "statistic": statistic, "family": "secondary", "verdict": "not tested", "value": None,
            "ci": None, "p_value": None, "p_adjusted": None, "level": None, "seeds": None, "runs": runs, "prompts": None,
            "null": None, "detail": why, "configurations": [], "variance": None, "to_settle": None}


def tested(claim: str, statistic: str, quantity: Resampled, detail: str, runs: int, seeds: list,
           null: tuple[float, float] = (0.0, 0.0)) -> dict:
    """A claim with its estimate; the verdict waits for `decide`. A statistic without a finite value
    (e.g. a mean over prompts no resample drew) is not tested: it has nothing to decide."""
    variance = {"seeds": resample_variance(quantity.seeds), "prompts": resample_variance(quantity.prompts),
                "seeds_per_configuration": quantity.fewest_seeds}
    return tested_estimate(claim, statistic, estimate(quantity, null), detail, runs, seeds, quantity.n_prompts,
                           quantity.configs, null, variance)


def tested_estimate(claim: str, statistic: str, e: Estimate, detail: str, runs: int, seeds: list, prompts: int,
                    configs: dict, null: tuple[float, float] = (0.0, 0.0), variance: dict | None = None) -> dict:
    """A claim with an estimate made otherwise than by `tested`'s bootstrap (e.g. an exact test);
    configs maps each configuration behind it to its number of seeds; variance: the bootstrap's seed and
    prompt components (None for an exact test: nothing then says what would settle it)."""
    if not (math.isfinite(e.value) and math.isfinite(e.p_value)):
        return untested(claim, statistic, f"{detail}; the statistic is undefined here ({e.value})", runs)
    decidable = min(configs.values(), default=0) >= 2
    if e.without_spread:
        detail += "; no resample of seeds or prompts moved the statistic: no variance measured, so p = 1"
    if not decidable:
        detail += "; fewer than 2 seeds per configuration: training noise unmeasured, so no verdict"
    return {"claim": claim, "statistic": statistic, "family": "secondary",
            "verdict": None if decidable else "inconclusive", **e.to_dict(), "p_adjusted": None, "level": None, "seeds": seeds,
            "runs": runs, "prompts": prompts, "null": list(null), "detail": detail,
            "configurations": sorted(configs), "variance": variance, "to_settle": None}


def declare_primary(claims: list[dict], primary) -> list[dict]:
    """Put the claims titled in `primary` into the primary family, the rest into the secondary (in
    place). A title that no claim has is a ValueError listing the titles there are."""
    titles = [c["claim"] for c in claims]
    unknown = [p for p in primary if p not in titles]
    if unknown:
        raise ValueError(f"no claim {unknown[0]!r} in this report; its claims are: {'; '.join(titles) or 'none'}")
    for claim in claims:
        claim["family"] = "primary" if claim["claim"] in primary else "secondary"
    return claims


def decide(claims: list[dict], primary_level: float = ALPHA) -> list[dict]:
    """Holm-adjust the p-values of the decidable claims within each family, set every verdict, and say
    what would settle each inconclusive one (in place). The primary family is decided at
    `primary_level` (below 5% at the looks of a sequential design: alignlab.analysis.sequential)."""
    for family in FAMILIES:
        level = primary_level if family == "primary" else ALPHA
        open_claims = [c for c in claims if c["verdict"] is None and c["family"] == family]
        for claim, adjusted in zip(open_claims, holm([c["p_value"] for c in open_claims])):
            claim["p_adjusted"] = adjusted
            claim["verdict"] = verdict(claim["value"], adjusted, tuple(claim["null"]), level)
            claim["level"] = level
        for claim in open_claims:
            if claim["verdict"] == "inconclusive":
                claim["to_settle"] = to_settle(claim, level / len(open_claims))
    return claims


def seeds_for_power(effect: float, v_seeds: float, v_prompts: float, seeds: int, prompts: int, level: float,
                    power: float = POWER, df: float | None = None) -> dict:
    """How much more data gives a two-sided test at `level` `power` against a true effect `effect`, for an
    estimate whose variance is v_seeds · seeds/S + v_prompts · prompts/P (the module docstring):
        seeds_per_configuration   the fewest seeds S, prompts held (None: prompt noise alone is too large)
        prompts                   the fewest prompts P, seeds held (None: seed noise alone is too large)
        both                      {seeds_per_configuration, prompts}: both scaled by one factor
    All None when there is no effect to detect. With `df` (the estimate's degrees of freedom now) the
    test is Student's t, its df growing with the seeds as df · (S − 1)/(seeds − 1): with 2–3 seeds the t
    quantile, not the variance, is what keeps a claim open, and a normal test would ask for too few."""
    if effect == 0:
        return {"seeds_per_configuration": None, "prompts": None, "both": None}

    def target(seed_factor: float) -> float:
        """The largest variance that gives the power, at `seed_factor` times the seeds."""
        critical = _z(1 - level / 2)
        if df is not None:
            critical = float(student_t.ppf(1 - level / 2, df * max(seeds * seed_factor - 1, 1) / max(seeds - 1, 1)))
        return (abs(effect) / (critical + _z(power))) ** 2

    def needed(component: float, now: int, other: float, allowed: float) -> int | None:
        if other >= allowed:
            return None
        return max(now, math.ceil(component * now / (allowed - other)))

    normal_factor = max(1.0, (v_seeds + v_prompts) / target(math.inf))
    prompts_needed = needed(v_prompts, prompts, v_seeds, target(1.0))
    if df is None:
        seeds_needed = needed(v_seeds, seeds, v_prompts, target(1.0))
        factor = normal_factor
    else:  # the df move with the seeds: the fewest that reach the power, up to TOO_MUCH_MORE² times
        candidates = range(seeds, seeds * TOO_MUCH_MORE ** 2 + 1)
        seeds_needed = next((s for s in candidates if v_seeds * seeds / s + v_prompts <= target(s / seeds)), None)
        factor = next((s / seeds for s in candidates if (v_seeds + v_prompts) * seeds / s <= target(s / seeds)),
                      normal_factor)
    return {"seeds_per_configuration": seeds_needed, "prompts": prompts_needed,
            "both": {"seeds_per_configuration": math.ceil(seeds * factor), "prompts": math.ceil(prompts * factor)}}


def to_settle(claim: dict, level: float) -> dict | None:
    """What would settle an inconclusive claim at the family's Bonferroni `level` (the module docstring);
    None for a claim without bootstrap variance components (an exact test of a share)."""
    variance = claim["variance"]
    if variance is None:
        return None
    effect = distance_from_null(claim["value"], claim["null"])
    seeds, prompts = variance["seeds_per_configuration"], claim["prompts"]
    needed = seeds_for_power(effect, variance["seeds"], variance["prompts"], seeds, prompts, level,
                             df=claim.get("df"))
    # The effect the data as they are would detect with that power: what "no difference" here can exclude.
    df = claim.get("df")
    critical = _z(1 - level / 2) if df is None else float(student_t.ppf(1 - level / 2, df))
    detectable = (critical + _z(POWER)) * math.sqrt(variance["seeds"] + variance["prompts"])
    assumes = (f"{POWER:.0%} power at the observed effect {effect:+.4g} (distance from the null region), "
               f"two-sided level {level:.3g} (the family's level over its decidable claims), Student's t at "
               f"{'the normal limit' if df is None else f'{df:.3g} df now, growing with the seeds'}; "
               f"seed variance scales as {seeds}/S and prompt variance as {prompts}/P from the "
               f"bootstrap's components; optimistic for an effect picked as the largest")
    return {**needed, "effect": effect, "detectable_effect": detectable, "level": level, "assumes": assumes}


def to_settle_text(claim: dict) -> str:
    """One line on what would settle an inconclusive claim; "" when nothing is computed."""
    settle = claim.get("to_settle")
    if not settle:
        return ""
    now = f"the data as they are detect an effect of about {settle['detectable_effect']:.3g} with {POWER:.0%} power"
    if settle["effect"] == 0:
        return f"to settle: no effect observed (the estimate lies in the null region); {now}"
    seeds, prompts, both = settle["seeds_per_configuration"], settle["prompts"], settle["both"]
    options = ([f"about {seeds} seeds per configuration"] if seeds else []) + (
        [f"about {prompts} reporting prompts"] if prompts else [])
    scale = both["seeds_per_configuration"] / max(claim["variance"]["seeds_per_configuration"] or 1, 1)
    if not options and scale > TOO_MUCH_MORE:  # a count in the thousands reads as advice; it is not
        text = (f"more than {TOO_MUCH_MORE}× the seeds and prompts there are: the observed effect is far "
                "below what a study of this kind detects")
    else:
        text = " or ".join(options) or (f"about {both['seeds_per_configuration']} seeds per configuration and "
                                        f"{both['prompts']} reporting prompts together")
    return f"to settle ({POWER:.0%} power at the observed effect {settle['effect']:.3g}): {text}; {now}"


def correction_text(claims: list[dict]) -> str:
    counts = {f: sum(c["p_adjusted"] is not None and c["family"] == f for c in claims) for f in FAMILIES}
    return (f"{CORRECTION} within the primary family ({counts['primary']} decidable claim(s)) and, separately, "
            f"within the secondary family ({counts['secondary']}); family-wise 5% in each")
