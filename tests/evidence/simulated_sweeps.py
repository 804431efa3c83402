"""Sweeps simulated from a known truth, for testing the claim code's error rates (numpy only).

Each trained model (method m, configuration c, seed s) has the per-prompt gold score
    level + prompt effect (shared by every model) + shift_m + jitter_{m,c} + seed effect_{m,c,s} + sample noise,
like a real sweep's: prompts differ in difficulty for every model, a configuration has a true mean of its
own, a lucky seed is a better model on every prompt, and each response is noisy. On top of the plain
normal layout, the noise real sweeps show can be switched on:
    seed_sd           per method (a dict): training noise differs between methods, as the study's own
                      noise floors do (NOISE_FLOORS: DPO 0.23, LN-DPO 0.40, SimPO 0.07, VAR 0.02: 20×)
    jitter_sd         each configuration's true mean shifted by N(0, jitter_sd), centred within each
                      method's grid, so that every method's grid mean (its expected score) is the same
                      while the configurations of a grid truly differ
    prompt_df         prompt effects from Student's t with this many df (heavy tails), scaled to PROMPT_SD
    gold_step         gold scores rounded to this grid (discrete gold: ties within and across models)
    seed_correlation  ρ: seed s of every model shares a component z_s (data order and initialisation
                      drawn from the same seed): seed effect = sd_m · (√ρ · z_s + √(1 − ρ) · e_{m,c,s})
Seed values (a run's `seed`, by which the evidence layer draws configurations that share seeds jointly):
the same s in every configuration when seeds are correlated (or `shared_seeds`), as a user's sweep of
seeds 0, 1, 2 has them; otherwise each configuration's own, SEED_STRIDE · (its index + 1) + s, as
`alignlab run` trains them (alignlab.study.grid.configuration_seed). `replicate(run)` is s either way.
Length and length-normalised KL follow the same layout, their seed effects scaled with the method's
gold seed sd (a noisier method is noisier in every column) but drawn apart from the gold's.
"""

from __future__ import annotations

import numpy as np

from alignlab.analysis import RunRecord

PROMPT_SD, SEED_SD, SAMPLE_SD = 0.4, 0.1, 0.3
LEVEL = 1.0  # the mean gold score: away from 0, as a relative gain (VAR's claim) needs
# The seed sd of a model's mean gold score per method in the study (issue 29): 20× apart.
NOISE_FLOORS = {"dpo": 0.23, "ln-dpo": 0.40, "simpo": 0.07, "var": 0.02}
LENGTH_PER_GOLD, LN_KL_PER_GOLD = 10.0, 0.2  # seed sd of length and ln-KL per unit of gold seed sd
SEED_STRIDE = 1000


def replicate(run) -> int:
    """The replicate number s of a simulated run, whatever its seed value."""
    return run.params["seed"] % SEED_STRIDE


def noise_floor(n_prompts: int, seed_sd: float = SEED_SD) -> float:
    """The seed-to-seed sd of one model's mean gold score over n_prompts prompts."""
    return float(np.sqrt(seed_sd ** 2 + SAMPLE_SD ** 2 / n_prompts))


def simulate_sweep(rng, grid: dict[str, int], seeds: int = 3, n_prompts: int = 200,
                   shift: dict[str, float] | None = None, seed_sd: float | dict = SEED_SD,
                   sample_sd: float = SAMPLE_SD, jitter_sd: float = 0.0, prompt_df: float | None = None,
                   gold_step: float | None = None, seed_correlation: float = 0.0, shared_seeds: bool | None = None):
    """(runs, sft): `grid` maps a method to its number of configurations; `shift` adds to a method's
    every gold score (its true advantage); seed_sd is one sd or one per method (see the module docstring
    for the rest)."""
    ids = [f"p{i}" for i in range(n_prompts)]
    if prompt_df is None:
        prompt_effect = rng.normal(0, PROMPT_SD, n_prompts)
    else:  # Student t scaled to sd PROMPT_SD (its variance is df/(df − 2))
        prompt_effect = PROMPT_SD * rng.standard_t(prompt_df, n_prompts) / np.sqrt(prompt_df / (prompt_df - 2))
    prompt_gold = LEVEL + prompt_effect
    prompt_length = rng.normal(30, 5, n_prompts)
    shared_seed = rng.normal(0, 1, seeds)  # z_s, one per seed index
    rho = seed_correlation

    def discrete(gold):
        return gold if gold_step is None else gold_step * np.round(gold / gold_step)

    def model(gold_shift: float, sd: float | None, seed: int | None) -> dict:
        if seed is None:  # the SFT baseline: a fixed model
            seed_effect = 0.0
        else:
            seed_effect = np.sqrt(rho) * shared_seed[seed] + np.sqrt(1 - rho) * rng.normal(0, 1)
        # A seed's length and KL luck is its own: a pick on gold (item 2 of issue 29) does not carry it.
        seed_length, seed_kl = (0.0, 0.0) if seed is None else rng.normal(0, 1, 2)
        length = np.maximum(1.0, prompt_length + LENGTH_PER_GOLD * (sd or 0) * seed_length
                            + rng.normal(0, 4, n_prompts))
        ln_kl = np.abs(rng.normal(0.2 + LN_KL_PER_GOLD * (sd or 0) * seed_kl, 0.05, n_prompts))
        gold = prompt_gold + gold_shift + (sd or 0) * seed_effect + rng.normal(0, sample_sd, n_prompts)
        return {"prompt_id": np.array(ids), "gold_score": discrete(gold), "length": length, "ln_kl": ln_kl}

    def record(name, method, params, samples):
        metrics = {"mean_score": {"value": float(samples["gold_score"].mean()), "ci_low": 0.0, "ci_high": 0.0}}
        return RunRecord(name, method, params, metrics, samples)

    shared = seed_correlation > 0 if shared_seeds is None else shared_seeds
    runs, index = [], 0
    for method, n_configs in grid.items():
        sd = seed_sd[method] if isinstance(seed_sd, dict) else seed_sd
        jitter = rng.normal(0, jitter_sd, n_configs)
        jitter -= jitter.mean()
        for c in range(n_configs):
            index += 1
            for s in range(seeds):
                seed_value = s if shared else SEED_STRIDE * index + s
                runs.append(record(f"{method}-c{c}-s{s}", method, {"beta": float(c), "seed": seed_value},
                                   model((shift or {}).get(method, 0.0) + jitter[c], sd, s)))
    return runs, record("sft", "sft", {}, model(0.0, None, None))


def families(n_prompts: int = 200) -> dict[str, str]:
    """Prompt families as the study world has them: about 60% helpful, 40% harmful."""
    return {f"p{i}": "harmful" if i % 5 < 2 else "helpful" for i in range(n_prompts)}


def as_table(runs, sft, family_of: dict[str, str] | None = None):
    """The sweep as `alignlab verdict` reads it: one row per response (method, configuration, seed,
    prompt_id, score, length, kl, and family when given), the configuration named as in the run names."""
    import pandas as pd

    models = [*runs, sft]
    sizes = [len(m.samples["prompt_id"]) for m in models]
    columns = {"method": np.repeat([m.method for m in models], sizes),
               "configuration": np.repeat([m.name[len(m.method) + 1:].rsplit("-s", 1)[0] or "base" for m in models],
                                          sizes),
               "seed": np.repeat([m.params.get("seed", 0) for m in models], sizes),
               "prompt_id": np.concatenate([m.samples["prompt_id"] for m in models]),
               "score": np.concatenate([m.samples["gold_score"] for m in models]),
               "length": np.concatenate([m.samples["length"] for m in models]),
               "kl": np.concatenate([m.samples["ln_kl"] * m.samples["length"] for m in models])}
    if family_of is not None:
        columns["family"] = [family_of[p] for p in columns["prompt_id"]]
    return pd.DataFrame(columns)


def sequential_claims(rng, grid: dict[str, int], seeds: int, max_seeds: int, seed: int = 0, n_resamples: int = 300,
                      n_prompts: int = 200, shift: dict[str, float] | None = None, **noise) -> tuple[list[dict], list]:
    """(final claims, looks) of a study that starts each configuration with `seeds` seeds and adds seeds
    by the sequential design (alignlab.analysis.sequential.run_looks) up to `max_seeds`, every look and
    the final analysis through `alignlab.verdict`'s code path (the interim looks on the same evidence,
    built from the runs without the table's round trip): the sweep is simulated with max_seeds seeds up
    front, and a look reveals the next seed of the configurations it asks for."""
    from alignlab import verdict
    from alignlab.analysis import SweepEvidence, claims_of
    from alignlab.analysis.sequential import run_looks

    runs, sft = simulate_sweep(rng, grid, seeds=max_seeds, n_prompts=n_prompts, shift=shift, **noise)
    family_of = families(n_prompts)
    def configuration(run) -> str:  # "dpo-c0" of run "dpo-c0-s2", as a scores table's rows name it too
        return run.name.rsplit("-s", 1)[0]

    shown = {configuration(run): seeds for run in runs}  # seeds revealed per configuration

    def visible():
        return [r for r in runs if replicate(r) < shown[configuration(r)]]

    def evidence():
        return SweepEvidence(visible(), sft, n_resamples, seed)

    def add_seeds(configurations, looks):
        for config in configurations:
            shown[configuration(config.runs[0])] += 1

    looks = run_looks(evidence, add_seeds, max_seeds,
                      lambda ev, looks: claims_of(ev, family_of, looks=looks, interim=True))
    final = verdict(as_table(visible(), sft, family_of), n_resamples=n_resamples, seed=seed, looks=looks)
    return final, looks
