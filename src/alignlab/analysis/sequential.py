"""Seeds where the noise is: a group-sequential design for the primary claims (SPEC §6).

A study trains every configuration with its first seeds, then looks at its primary claims. Each
claim still open at the look names the configurations whose training noise keeps it open
(`seeds_wanted`); each of them gets one more seed, and the study looks again — until every primary
claim is decided, no configuration that limits an open claim may have another seed (`max_seeds`), or
the caller's time budget cannot pay for the next round (`run_looks`).

α-spending (Haybittle–Peto). Each interim look tests the primary family at INTERIM_LEVEL (0.1%),
Holm over the whole family; the final analysis, on all the data, at the 5% left over:
    level of the final analysis = 5% − 0.1% × (interim looks)
A claim decided at an interim look keeps that verdict and the numbers it was decided on (later seeds
are added for the claims still open, and could move it either way). The family-wise error over all
looks is at most the sum of the levels spent (Bonferroni over the looks, each look's Holm at its own
level), so it is 5% whatever the looks' statistics have in common and whatever decided how many
looks there were. O'Brien–Fleming boundaries spend as little early, but their final level of about
5% rests on the joint normal law of the looks' statistics, which a t test with 2–8 degrees of
freedom on seeds added to some configurations only does not have; the fixed small interim level
needs no such law and costs the final look 0.1% per interim look (4.7% after three).

Which configurations get a seed. A primary claim compares two methods' reported means, each the
mean of its configurations (one configuration for a best-vs-best claim). The seed noise of method m's
side is about σ_m² · Σ_c 1/S_c / C_m² (σ_m its noise floor, C_m configurations, S_c seeds each).
A seed goes to every configuration of each side whose seed noise is at least half the larger side's
(the noisier method, or both when they are alike), for claims whose bootstrap variance is mostly
training noise (v_seeds ≥ v_prompts: where prompts dominate, more seeds decide nothing).

The secondary claims are tested once, on the final data, at 5%; their seeds were added for the
primary claims' sake (an adaptive design), which the report says.
"""

from __future__ import annotations

from typing import Callable

from alignlab.analysis.replicates import Configuration, SweepEvidence
from alignlab.evidence import ALPHA

INTERIM_LEVEL = 0.001
DECIDED = ("confirmed", "reversed")


def primary_level(looks: list[dict], interim: bool) -> float:
    """The primary family's level at the next analysis: INTERIM_LEVEL at an interim look, else what
    the interim looks so far left of 5%."""
    return INTERIM_LEVEL if interim else ALPHA - INTERIM_LEVEL * len(looks)


def carry_decided(claims: list[dict], looks: list[dict]) -> list[dict]:
    """`claims` with each primary claim an earlier look decided replaced by the claim as it was decided
    there (its numbers, verdict and level), marked with the look."""
    earlier = {c["claim"]: c for look in looks for c in look["decided"]}
    carried = []
    for claim in claims:
        decided = earlier.get(claim["claim"])
        if decided is None or claim["family"] != "primary":
            carried.append(claim)
            continue
        look = next(lk for lk in looks if decided in lk["decided"])
        note = (f"decided at interim look {look['look']} ({look['runs']} runs, level {decided['level']:.3g}); "
                "its numbers are that look's")
        carried.append({**decided, "detail": f"{decided['detail']}; {note}", "decided_at_look": look["look"]})
    return carried


def seed_noise(ev: SweepEvidence, configs: list[Configuration]) -> float:
    """σ_m² · Σ_c 1/S_c / C² of one side of a claim (the module docstring); infinite when the method's
    noise floor is unmeasured (one seed per configuration)."""
    floor = ev.noise_floor(configs[0].method)
    if floor is None:
        return float("inf")
    return floor ** 2 * sum(1 / len(c.runs) for c in configs) / len(configs) ** 2


def seeds_wanted(ev: SweepEvidence, claims: list[dict], max_seeds: int) -> list[Configuration]:
    """The configurations that get one more seed after this look: those whose training noise limits a
    primary claim still open (the module docstring), each with fewer than `max_seeds` seeds."""
    by_name = {c.name: c for configs in ev.by_method.values() for c in configs}
    wanted: dict[str, Configuration] = {}
    for claim in claims:
        if claim["family"] != "primary" or claim["verdict"] != "inconclusive" or not claim["variance"]:
            continue
        if claim["variance"]["seeds"] < claim["variance"]["prompts"]:
            continue
        sides: dict[str, list[Configuration]] = {}
        for name in claim["configurations"]:
            if name in by_name:
                sides.setdefault(by_name[name].method, []).append(by_name[name])
        noise = {method: seed_noise(ev, configs) for method, configs in sides.items()}
        loudest = max(noise.values(), default=0.0)
        for method, configs in sides.items():
            if noise[method] >= loudest / 2:
                wanted.update({c.name: c for c in configs if len(c.runs) < max_seeds})
    return list(wanted.values())


def run_looks(evidence: Callable[[], SweepEvidence], add_seeds: Callable[[list[Configuration], list[dict]], None],
              max_seeds: int, claims_at: Callable[[SweepEvidence, list[dict]], list[dict]],
              affordable: Callable[[int], bool] = lambda runs: True, looks: list[dict] | None = None) -> list[dict]:
    """The interim looks of a study, in order, each {look, runs, level, decided, open, added}.

    evidence(): the sweep's finished runs now; claims_at(ev, looks): the report's claims at an interim
    look (alignlab.analysis.claims_of with `looks` and interim=True); add_seeds(configurations, looks):
    train one more seed of each (the looks so far passed along, to be saved first); affordable(n):
    whether n more runs fit the time left. looks: those a resumed study already made (their seeds are
    trained by then). Returns every look made, to be passed to the final analysis."""
    looks = list(looks or [])
    while True:
        ev = evidence()
        claims = claims_at(ev, looks)
        wanted = seeds_wanted(ev, claims, max_seeds)
        if not wanted or not affordable(len(wanted)):
            return looks
        earlier = {c["claim"] for look in looks for c in look["decided"]}
        looks.append({"look": len(looks) + 1, "runs": sum(len(c.runs) for cs in ev.by_method.values() for c in cs),
                      "level": INTERIM_LEVEL,
                      "decided": [c for c in claims if c["family"] == "primary" and c["verdict"] in DECIDED
                                  and c["claim"] not in earlier],
                      "open": [c["claim"] for c in claims if c["family"] == "primary" and c["verdict"] not in DECIDED],
                      "added": [c.name for c in wanted]})
        add_seeds(wanted, looks)
