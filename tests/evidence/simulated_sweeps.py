"""Sweeps simulated from a known truth, for testing the claim code's error rates (numpy only).

Each trained model's per-prompt gold score is
    prompt effect (shared by every model) + method shift + seed effect + per-sample noise,
like a real sweep's: prompts differ in difficulty for every model, a lucky seed is a better model on
every prompt, and each response is noisy. Length and length-normalised KL follow the same layout.
"""

from __future__ import annotations

import numpy as np

from alignlab.analysis import RunRecord

PROMPT_SD, SEED_SD, SAMPLE_SD = 0.4, 0.1, 0.3
LEVEL = 1.0  # the mean gold score: away from 0, as a relative gain (VAR's claim) needs


def noise_floor(n_prompts: int) -> float:
    """The seed-to-seed sd of one model's mean gold score over n_prompts prompts."""
    return float(np.sqrt(SEED_SD ** 2 + SAMPLE_SD ** 2 / n_prompts))


def simulate_sweep(rng, grid: dict[str, int], seeds: int = 3, n_prompts: int = 200,
                   shift: dict[str, float] | None = None, seed_sd: float = SEED_SD, sample_sd: float = SAMPLE_SD):
    """(runs, sft): `grid` maps a method to its number of configurations; `shift` adds to a method's
    every gold score (its true advantage)."""
    ids = [f"p{i}" for i in range(n_prompts)]
    prompt_gold = LEVEL + rng.normal(0, PROMPT_SD, n_prompts)
    prompt_length = rng.normal(30, 5, n_prompts)

    def model(gold_shift: float, seed_effect: bool = True) -> dict:
        seed_gold = rng.normal(0, seed_sd) if seed_effect else 0.0
        seed_length = rng.normal(0, 1) if seed_effect else 0.0
        length = np.maximum(1.0, prompt_length + seed_length + rng.normal(0, 4, n_prompts))
        return {"prompt_id": np.array(ids),
                "gold_score": prompt_gold + gold_shift + seed_gold + rng.normal(0, sample_sd, n_prompts),
                "length": length, "ln_kl": np.abs(rng.normal(0.2, 0.05, n_prompts))}

    def record(name, method, params, samples):
        metrics = {"mean_score": {"value": float(samples["gold_score"].mean()), "ci_low": 0.0, "ci_high": 0.0}}
        return RunRecord(name, method, params, metrics, samples)

    runs = []
    for method, n_configs in grid.items():
        for c in range(n_configs):
            for s in range(seeds):
                runs.append(record(f"{method}-c{c}-s{s}", method, {"beta": float(c), "seed": s},
                                   model((shift or {}).get(method, 0.0))))
    return runs, record("sft", "sft", {}, model(0.0, seed_effect=False))


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
