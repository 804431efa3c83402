"""Generic statistics of the analyses: intervals, bootstrap resamples, verdicts and claim records.

Everything here is a pure function of plain Python / numpy data: no plotting, no file IO, no torch,
and no knowledge of runs or their methods (alignlab.analysis.runs has those).

Definitions
    verdict          a claim's statistic is oriented so that > 0 means the claim holds; its 95% CI
                     gives "confirmed" (low > 0), "reversed" (high < 0) or "not confirmed".

All CIs are percentile bootstraps at 95%, seeded, with N_RESAMPLES resamples.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from alignlab.evaluation.metrics import bootstrap_ci

N_RESAMPLES = 2000
WILSON_Z = 1.959964  # two-sided 95% normal quantile


def wilson_interval(count: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion count/n.

    centre = (p + z²/2n) / (1 + z²/n),  half = z/(1 + z²/n) · √(p(1 − p)/n + z²/4n²).
    Unlike p ± z√(p(1−p)/n) it stays inside [0, 1] and is not degenerate at p = 0 or 1,
    which matters for the handful of runs a method's grid has.
    """
    if n <= 0:
        raise ValueError("Wilson interval of zero trials")
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def verdict(low: float, high: float) -> str:
    """Verdict from the 95% CI of a statistic oriented so that > 0 means the claim holds."""
    if low > 0:
        return "confirmed"
    if high < 0:
        return "reversed"
    return "not confirmed"


def stratified_bootstrap_ci(groups, statistic: Callable, n_resamples: int = N_RESAMPLES,
                             seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(*groups), resampling each group independently.

    For statistics comparing methods over their grids: each method's runs are a separate sample,
    so they are resampled within the method (metrics.bootstrap_ci resamples a single sample).
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(*(g[rng.integers(0, len(g), len(g))] for g in groups))
                      for _ in range(n_resamples)])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n] how often each of n prompts is drawn in each bootstrap resample.

    Drawn as metrics.bootstrap_ci draws, so with the same seed the resamples are the same ones. A
    resampled mean of every column of a [n_columns, n] table is then one product, counts @ table.T / n,
    without materialising the [n_resamples, n_columns, n] table of resampled values.
    """
    picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = (picks + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def mean_with_ci(values, seed: int) -> dict:
    """{"mean", "ci_low", "ci_high"} of values, the CI a bootstrap with N_RESAMPLES resamples."""
    low, high = bootstrap_ci(values, n_resamples=N_RESAMPLES, seed=seed)
    return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}


def logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ exp(a) over the last axis, shifted by the max so that summed log-probs (≈ −1000) do not underflow."""
    top = a.max(axis=-1)
    return top + np.log(np.exp(a - top[..., None]).sum(axis=-1))


def claim_record(claim: str, statistic: str, n_runs: int, detail: str, value=None, ci=(None, None)) -> dict:
    """A claim's record: {"claim", "statistic", "value", "ci_low", "ci_high", "verdict", "n_runs",
    "detail"}; without a value, verdict "not tested" and value None (detail then says why)."""
    tested = value is not None
    return {"claim": claim, "statistic": statistic, "value": float(value) if tested else None,
            "ci_low": ci[0], "ci_high": ci[1], "verdict": verdict(*ci) if tested else "not tested",
            "n_runs": n_runs, "detail": detail}

