"""Evaluation metrics of SPEC §5 as pure functions of per-sample arrays, with bootstrap 95% CIs.

Per-sample inputs (one entry per test prompt):
    gold_score   gold reward of the model's response
    chosen_score gold reward of the dataset's chosen response to the same prompt
    sft_score    gold reward of the SFT model's response to the same prompt (optional)
    logp_policy  Σ over the response tokens of log πθ(y_t | x, y_<t)
    logp_sft     the same under the SFT model (optional)
    length       response length in tokens

Metrics: mean_score = mean(gold); win_vs_chosen and win_vs_sft = mean of 1[a > b] + ½·1[a = b];
kl = mean(logp_policy − logp_sft) (a Monte-Carlo estimate of KL(πθ ‖ π_SFT) from πθ's own samples);
ln_kl = mean((logp_policy − logp_sft) / length); length = mean(length).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_ci(values, statistic: Callable = np.mean, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` over resamples of `values` (seeded)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(n_resamples, len(values)))
    stats = np.array([statistic(values[p]) for p in picks])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def wins(a, b) -> np.ndarray:
    """Per-sample win of a over b: 1, ties ½, else 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a > b) + 0.5 * (a == b)


def win_rate(a, b) -> float:
    return float(wins(a, b).mean())


def _with_ci(per_sample, seed: int) -> dict:
    low, high = bootstrap_ci(per_sample, seed=seed)
    return {"value": float(np.mean(per_sample)), "ci_low": low, "ci_high": high}


def summarize(samples: dict, seed: int = 0) -> dict:
    """Every metric as {"value", "ci_low", "ci_high"}; None where its inputs are absent."""
    gold = np.asarray(samples["gold_score"], dtype=np.float64)
    length = np.asarray(samples["length"], dtype=np.float64)
    metrics = {"mean_score": _with_ci(gold, seed),
               "win_vs_chosen": _with_ci(wins(gold, samples["chosen_score"]), seed),
               "win_vs_sft": None, "kl": None, "ln_kl": None,
               "length": _with_ci(length, seed)}
    if samples.get("proxy_score") is not None:
        metrics["mean_proxy_score"] = _with_ci(np.asarray(samples["proxy_score"], dtype=np.float64), seed)
    if samples.get("sft_score") is not None:
        metrics["win_vs_sft"] = _with_ci(wins(gold, samples["sft_score"]), seed)
    if samples.get("logp_sft") is not None:
        kl = np.asarray(samples["logp_policy"], dtype=np.float64) - np.asarray(samples["logp_sft"], dtype=np.float64)
        metrics["kl"] = _with_ci(kl, seed)
        metrics["ln_kl"] = _with_ci(kl / np.maximum(length, 1), seed)
    return metrics
