"""The sequential design's pieces (alignlab.analysis.sequential), checked against hand-worked values."""

import numpy as np
import pytest

from alignlab.analysis import RunRecord, SweepEvidence
from alignlab.analysis.sequential import (INTERIM_LEVEL, carry_decided, primary_level, run_looks, seed_noise,
                                          seeds_wanted)

PROMPTS = [f"p{i}" for i in range(40)]


def run(method: str, config: int, seed: int, offset: float) -> RunRecord:
    """A model whose gold is 1 + offset on every prompt: its seed effect is exactly `offset`."""
    samples = {"prompt_id": np.array(PROMPTS), "gold_score": np.full(len(PROMPTS), 1.0 + offset)}
    return RunRecord(f"{method}-c{config}-s{seed}", method, {"beta": float(config), "seed": seed},
                     {"mean_score": {"value": 1.0 + offset}}, samples)


def sweep(offsets: dict[str, list[list[float]]]) -> SweepEvidence:
    """offsets: method -> per configuration, the seed effects of its seeds."""
    runs = [run(m, c, s, o) for m, configs in offsets.items() for c, seeds in enumerate(configs)
            for s, o in enumerate(seeds)]
    return SweepEvidence(runs, None, n_resamples=50)


def test_interim_looks_spend_a_tenth_of_a_percent_each_and_the_final_analysis_the_rest():
    assert primary_level([], interim=False) == 0.05
    assert primary_level([{}, {}, {}], interim=False) == pytest.approx(0.047)
    assert primary_level([{}], interim=True) == INTERIM_LEVEL == 0.001


def test_seed_noise_of_a_side_is_its_noise_floor_squared_over_configurations_and_seeds():
    # Seed effects −1, 0, +1 in each configuration: sample variance 1, so the noise floor is 1. Two
    # configurations of 3 seeds: 1 · (1/3 + 1/3) / 2² = 1/6. A second method with effects ±0.1 over
    # 2 seeds: variance 0.02, one configuration: 0.02 · (1/2) / 1 = 0.01.
    ev = sweep({"dpo": [[-1, 0, 1], [-1, 0, 1]], "simpo": [[-0.1, 0.1]]})
    assert seed_noise(ev, ev.by_method["dpo"]) == pytest.approx(1 / 6)
    assert seed_noise(ev, ev.by_method["simpo"]) == pytest.approx(0.01)


def open_claim(configurations, seeds=1.0, prompts=0.1, verdict="inconclusive", family="primary"):
    return {"claim": "A ≥ B", "family": family, "verdict": verdict, "configurations": configurations,
            "variance": {"seeds": seeds, "prompts": prompts, "seeds_per_configuration": 3}}


def test_a_seed_goes_to_the_noisier_side_of_an_open_primary_claim_only():
    ev = sweep({"dpo": [[-1, 0, 1], [-1, 0, 1]], "simpo": [[-0.1, 0, 0.1], [-0.1, 0, 0.1]]})
    names = [c.name for cs in ev.by_method.values() for c in cs]
    wanted = seeds_wanted(ev, [open_claim(names)], max_seeds=6)
    assert sorted(c.name for c in wanted) == sorted(c.name for c in ev.by_method["dpo"])


def test_both_sides_get_a_seed_when_their_noise_is_alike():
    ev = sweep({"dpo": [[-1, 0, 1]], "simpo": [[-0.8, 0, 0.8]]})  # 1/3 against 0.64/3: more than half
    wanted = seeds_wanted(ev, [open_claim([c.name for cs in ev.by_method.values() for c in cs])], max_seeds=6)
    assert {c.method for c in wanted} == {"dpo", "simpo"}


@pytest.mark.parametrize("claim", [
    open_claim(None, verdict="confirmed"),               # decided
    open_claim(None, family="secondary"),                # not primary
    open_claim(None, seeds=0.1, prompts=1.0),            # prompts, not seeds, keep it open
])
def test_no_seed_for_a_decided_a_secondary_or_a_prompt_limited_claim(claim):
    ev = sweep({"dpo": [[-1, 0, 1]], "simpo": [[-0.1, 0, 0.1]]})
    claim["configurations"] = [c.name for cs in ev.by_method.values() for c in cs]
    assert seeds_wanted(ev, [claim], max_seeds=6) == []


def test_no_configuration_gets_more_than_max_seeds():
    ev = sweep({"dpo": [[-1, 0, 1], [-1, 0, 1, 0.5]], "simpo": [[-0.1, 0, 0.1]]})
    names = [c.name for cs in ev.by_method.values() for c in cs]
    assert [len(c.runs) for c in seeds_wanted(ev, [open_claim(names)], max_seeds=4)] == [3]


def test_a_claim_decided_at_an_interim_look_keeps_that_looks_numbers_and_verdict():
    decided = {"claim": "A ≥ B", "family": "primary", "verdict": "confirmed", "value": 2.0, "level": 0.001,
               "detail": "d"}
    looks = [{"look": 1, "runs": 48, "decided": [decided]}]
    now = [{"claim": "A ≥ B", "family": "primary", "verdict": "inconclusive", "value": 0.5, "detail": "x"},
           {"claim": "C ≥ D", "family": "primary", "verdict": "inconclusive", "value": 0.1, "detail": "y"}]
    carried = carry_decided(now, looks)
    assert carried[0]["verdict"] == "confirmed" and carried[0]["value"] == 2.0 and carried[0]["decided_at_look"] == 1
    assert "interim look 1 (48 runs, level 0.001)" in carried[0]["detail"]
    assert carried[1] == now[1]


def test_run_looks_adds_seeds_until_the_claims_are_decided_and_records_each_look():
    # A fake study: the claim is open at 3 and 4 seeds and decided at 5; every look asks for a seed of DPO (one configuration, named by its method).
    ev = sweep({"dpo": [[-1, 0, 1]], "simpo": [[-0.1, 0, 0.1]]})
    seeds = {"n": 3}
    calls = []

    def claims_at(ev, looks):
        verdict = "confirmed" if seeds["n"] >= 5 else "inconclusive"
        return [{**open_claim([c.name for cs in ev.by_method.values() for c in cs], verdict=verdict),
                 "level": INTERIM_LEVEL}]

    def add_seeds(configurations, looks):
        calls.append(([c.name for c in configurations], len(looks)))
        seeds["n"] += 1

    looks = run_looks(lambda: ev, add_seeds, max_seeds=6, claims_at=claims_at)
    assert [look["look"] for look in looks] == [1, 2] and calls == [(["dpo"], 1), (["dpo"], 2)]
    assert all(look["decided"] == [] and look["open"] == ["A ≥ B"] for look in looks)
    assert looks[0]["added"] == ["dpo"] and looks[0]["runs"] == 6 and looks[0]["level"] == INTERIM_LEVEL


def test_run_looks_makes_no_look_the_budget_cannot_pay_for():
    ev = sweep({"dpo": [[-1, 0, 1]], "simpo": [[-0.1, 0, 0.1]]})

    def claims_at(ev, looks):
        return [open_claim([c.name for cs in ev.by_method.values() for c in cs])]

    looks = run_looks(lambda: ev, lambda configurations, looks: pytest.fail("no look was affordable"), 6,
                      claims_at, affordable=lambda runs: False)
    assert looks == []
