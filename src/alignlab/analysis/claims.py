"""Claim records and the report-wide decision on them.

A claim's statistic is oriented so that a value above its null region supports it (the point 0 for
every claim the report makes: the VAR paper's +7.16% is a contrast). Each tested claim carries the estimate
of alignlab.evidence.bootstrap (value, 95% CI, p-value) and what stands behind it: the training seeds
per configuration, the runs of the compared methods and the reporting prompts. `decide` then applies
Holm's correction across every claim of one report that can get a verdict and sets the verdicts
(alignlab.evidence.testing). A claim on configurations with fewer than 2 seeds keeps its estimate but
cannot be decided: training noise is unmeasured, so it is inconclusive and outside the correction.
"""

from __future__ import annotations

import math

from alignlab.evidence import CORRECTION, Estimate, Resampled, estimate, holm, verdict


def untested(claim: str, statistic: str, why: str, runs: int = 0) -> dict:
    """A claim the sweep cannot test (no runs of a method, a column absent): verdict "not tested"."""
    return {"claim": claim, "statistic": statistic, "verdict": "not tested", "value": None, "ci": None,
            "p_value": None, "p_adjusted": None, "seeds": None, "runs": runs, "prompts": None, "null": None,
            "detail": why, "configurations": []}


def tested(claim: str, statistic: str, quantity: Resampled, detail: str, runs: int, seeds: list,
           null: tuple[float, float] = (0.0, 0.0)) -> dict:
    """A claim with its estimate; the verdict waits for `decide`. A statistic without a finite value
    (e.g. a mean over prompts no resample drew) is not tested: it has nothing to decide."""
    return tested_estimate(claim, statistic, estimate(quantity, null), detail, runs, seeds, quantity.n_prompts,
                           quantity.configs, null)


def tested_estimate(claim: str, statistic: str, e: Estimate, detail: str, runs: int, seeds: list, prompts: int,
                    configs: dict, null: tuple[float, float] = (0.0, 0.0)) -> dict:
    """A claim with an estimate made otherwise than by `tested`'s bootstrap (e.g. an exact test);
    configs maps each configuration behind it to its number of seeds."""
    if not (math.isfinite(e.value) and math.isfinite(e.p_value)):
        return untested(claim, statistic, f"{detail}; the statistic is undefined here ({e.value})", runs)
    decidable = min(configs.values(), default=0) >= 2
    if e.without_spread:
        detail += "; no resample of seeds or prompts moved the statistic: no variance measured, so p = 1"
    if not decidable:
        detail += "; fewer than 2 seeds per configuration: training noise unmeasured, so no verdict"
    return {"claim": claim, "statistic": statistic, "verdict": None if decidable else "inconclusive",
            **e.to_dict(), "p_adjusted": None, "seeds": seeds, "runs": runs, "prompts": prompts,
            "null": list(null), "detail": detail, "configurations": sorted(configs)}


def decide(claims: list[dict]) -> list[dict]:
    """Holm-adjust the p-values of the decidable claims together and set every verdict (in place)."""
    open_claims = [c for c in claims if c["verdict"] is None]
    for claim, adjusted in zip(open_claims, holm([c["p_value"] for c in open_claims])):
        claim["p_adjusted"] = adjusted
        claim["verdict"] = verdict(claim["value"], adjusted, tuple(claim["null"]))
    return claims


def correction_text(claims: list[dict]) -> str:
    decided = sum(c["p_adjusted"] is not None for c in claims)
    return f"{CORRECTION} over the {decided} decidable claim(s) of this report, family-wise 5%"
