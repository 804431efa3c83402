"""Robustness analyses of a hyper-parameter sweep (SPEC §6 items 1–6, the "Hitchhiker" analyses).

Everything here is a pure function of plain Python / numpy data: no plotting, no file IO, no torch.
A sweep is a list of RunRecord, one per trained model, holding its hyper-parameters, its summary
metrics (as metrics.summarize returns them) and its per-sample evaluation columns.

Definitions
    score            a run's mean gold reward over the test prompts (metrics["mean_score"]["value"]).
    ranking          runs are ranked by (score, name) ascending; the name only breaks exact ties so
                     that every selection below is deterministic.
    best run         the last run of the ranking (highest score).
    top-25% model    percentile_run(q=75): the run at the 75th percentile of the ranking, at index
                     floor((n − 1)·q/100 + 0.5), i.e. nearest-rank on the 0..n−1 positions with
                     halves rounded up. 4 runs → index 2 (second best), 5 → 3, 9 → 6, 1 → 0.
                     It answers "how good is a model you get without a lucky grid search?".
    top-k% runs      the best ceil(k/100 · n) runs (at least one), best first.
    expected perf.   the mean over the grid of per-run scores, with a bootstrap CI over runs.
    fraction worse   the share of runs whose score is below a baseline (SFT), with a Wilson interval.
    win rate         over the prompts two models share (joined by prompt_id), the mean of per-prompt
                     wins 1[a > b] + ½·1[a = b] of their gold scores, so rate(i, j) + rate(j, i) = 1.
    paired diff.     the mean over shared prompts of a[column] − b[column], bootstrap CI over prompts.
    verdict          a claim's statistic is oriented so that > 0 means the claim holds; its 95% CI
                     gives "confirmed" (low > 0), "reversed" (high < 0) or "not confirmed".

All CIs are percentile bootstraps at 95%, seeded, with N_RESAMPLES resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from alignlab.evaluation.metrics import bootstrap_ci, wins

N_RESAMPLES = 2000
WILSON_Z = 1.959964  # two-sided 95% normal quantile
LABELS = {"sft": "SFT", "dpo": "DPO", "ln-dpo": "LN-DPO", "simpo": "SimPO", "var": "VAR"}


@dataclass
class RunRecord:
    name: str                                    # unique run name, e.g. "dpo-beta0.1-lr5e-4-ep1-s0"
    method: str                                  # "sft", "dpo", "ln-dpo", "simpo", "var"
    params: dict = field(default_factory=dict)   # hyper-parameters: learning_rate, epochs, seed, beta, ...
    metrics: dict = field(default_factory=dict)  # metric -> {"value", "ci_low", "ci_high"} or None
    samples: dict = field(default_factory=dict)  # per-sample columns aligned by position, incl. "prompt_id"

    @property
    def score(self) -> float:
        return self.metrics["mean_score"]["value"]


def _label(method: str) -> str:
    return LABELS.get(method, method)


def metric_value(run: RunRecord, metric: str) -> float | None:
    """run.metrics[metric]["value"], or None where the metric was not measured."""
    entry = run.metrics.get(metric)
    return None if entry is None else entry["value"]


# ------------------------------------------------------------------ selecting runs

def _ranked(runs) -> list[RunRecord]:
    """Runs sorted ascending by (score, name)."""
    if not runs:
        raise ValueError("no runs to rank")
    return sorted(runs, key=lambda r: (r.score, r.name))


def best_run(runs) -> RunRecord:
    """The highest-scoring run (exact ties go to the later name, consistently with _ranked)."""
    return _ranked(runs)[-1]


def best_runs(runs) -> dict[str, RunRecord]:
    """The best run of each method, methods in order of first appearance."""
    by_method: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    return {method: best_run(group) for method, group in by_method.items()}


def percentile_run(runs, q: float = 75) -> RunRecord:
    """The run at the q-th percentile of the ranking: index floor((n − 1)·q/100 + 0.5).

    q=75 is the Hitchhiker "top-25% model"; q=100 is the best run, q=0 the worst.
    """
    ranked = _ranked(runs)
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    # (n-1)·q + 50 over 100 rather than (n-1)·q/100 + 0.5: exact for integer q, no float drift.
    return ranked[math.floor(((len(ranked) - 1) * q + 50) / 100)]


def top_k_runs(runs, k_pct: float) -> list[RunRecord]:
    """The best ceil(k_pct/100 · n) runs (at least one), best first."""
    if not 0 < k_pct <= 100:
        raise ValueError(f"k must be in (0, 100], got {k_pct}")
    ranked = _ranked(runs)[::-1]
    # k·n/100 rather than k/100·n: 7/100·100 is 7.000000000000001 and would round up to 8.
    count = min(len(ranked), max(1, math.ceil(k_pct * len(ranked) / 100)))
    return ranked[:count]


# ------------------------------------------------------------------ grid-level statistics

def expected_performance(runs, seed: int = 0) -> dict:
    """Distribution of per-run scores over the grid: mean (bootstrap CI over runs) and quantiles."""
    scores = np.array([r.score for r in runs], dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no runs")
    low, high = bootstrap_ci(scores, n_resamples=N_RESAMPLES, seed=seed)
    return {"mean": float(scores.mean()), "ci_low": low, "ci_high": high,
            "median": float(np.median(scores)), "q25": float(np.percentile(scores, 25)),
            "q75": float(np.percentile(scores, 75)), "min": float(scores.min()),
            "max": float(scores.max()), "n_runs": int(scores.size)}


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


def fraction_worse(runs, baseline_score: float) -> dict:
    """Share of runs whose score is strictly below baseline_score, with a Wilson 95% interval."""
    n = len(runs)
    count = sum(r.score < baseline_score for r in runs)
    low, high = wilson_interval(count, n)
    return {"fraction": count / n, "count": int(count), "n": n, "ci_low": low, "ci_high": high}


def top_k_distributions(runs_by_method: dict[str, list[RunRecord]], ks=(5, 10, 25, 50, 100),
                        metric: str = "length") -> dict[str, dict[int, list[float]]]:
    """Per method and k, the metric values of its top-k% runs (best first).

    Runs where the metric was not measured (None) are left out of the list.
    """
    out = {}
    for method, runs in runs_by_method.items():
        if not runs:
            continue
        out[method] = {}
        for k in ks:
            values = (metric_value(r, metric) for r in top_k_runs(runs, k))
            out[method][k] = [float(v) for v in values if v is not None]
    return out


def _sort_key(value):
    # Numbers sort numerically; anything else (strings, None) after them by its text.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if is_number else (1, 0, repr(value))


def varying_params(runs) -> list[str]:
    """Hyper-parameters taking more than one distinct value across the runs, in first-seen order.

    A parameter missing from some runs counts as varying (missing is a value of its own).
    """
    names = list(dict.fromkeys(name for r in runs for name in r.params))
    missing = object()
    return [name for name in names
            if len({repr(r.params.get(name, missing)) for r in runs}) > 1]


def sensitivity(runs, param: str, metric: str) -> list[dict]:
    """metric vs param: runs grouped by their value of param (sorted), each group's mean/min/max.

    Runs that lack the param or the metric are left out.
    """
    groups: dict = {}
    for run in runs:
        value = metric_value(run, metric)
        if param in run.params and value is not None:
            groups.setdefault(run.params[param], []).append(value)
    return [{"value": v, "mean": float(np.mean(groups[v])), "min": float(np.min(groups[v])),
             "max": float(np.max(groups[v])), "n": len(groups[v])}
            for v in sorted(groups, key=_sort_key)]


# ------------------------------------------------------------------ per-prompt comparisons

def _column(run: RunRecord, column: str) -> dict:
    """{prompt_id: value} of one per-sample column."""
    values = run.samples.get(column)
    if values is None:
        raise ValueError(f"run {run.name} has no per-sample column {column!r}")
    ids = [str(p) for p in run.samples["prompt_id"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"run {run.name} has several samples for one prompt_id")
    return dict(zip(ids, np.asarray(values, dtype=np.float64)))


def _joined(runs, column: str) -> np.ndarray:
    """[len(runs), n_shared] matrix of column on the prompts every run has (first run's order).

    Joined by prompt_id, not by position: runs evaluated on different subsets still line up.
    """
    tables = [_column(r, column) for r in runs]
    shared = [p for p in tables[0] if all(p in t for t in tables[1:])]
    if not shared:
        raise ValueError("no prompts shared by " + ", ".join(r.name for r in runs))
    return np.array([[t[p] for p in shared] for t in tables])


def paired_difference(a: RunRecord, b: RunRecord, column: str = "gold_score", seed: int = 0) -> dict:
    """Mean over shared prompts of a[column] − b[column], with a bootstrap 95% CI over prompts."""
    table = _joined([a, b], column)
    diff = table[0] - table[1]
    low, high = bootstrap_ci(diff, n_resamples=N_RESAMPLES, seed=seed)
    return {"value": float(diff.mean()), "ci_low": low, "ci_high": high, "n": int(diff.size)}


def win_matrix(models: dict[str, RunRecord], seed: int = 0) -> dict:
    """Head-to-head per-prompt gold win rates between models (e.g. each method's best run).

    rate[i][j] is model i's win rate over model j on their shared prompts, ties counting ½;
    the CI bootstraps the mean of the per-prompt wins. The lower triangle is filled as the
    complement of the upper one (rate[j][i] = 1 − rate[i][j], CI mirrored) so that the matrix
    is exactly consistent; the diagonal is 0.5 with CI [0.5, 0.5].
    """
    names = list(models)
    n = len(names)
    rate = [[0.5] * n for _ in range(n)]
    ci_low = [[0.5] * n for _ in range(n)]
    ci_high = [[0.5] * n for _ in range(n)]
    prompts = [[len(models[name].samples["prompt_id"]) if i == j else 0 for j in range(n)]
               for i, name in enumerate(names)]
    for i in range(n):
        for j in range(i + 1, n):
            table = _joined([models[names[i]], models[names[j]]], "gold_score")
            w = wins(table[0], table[1])
            low, high = bootstrap_ci(w, n_resamples=N_RESAMPLES, seed=seed)
            rate[i][j], rate[j][i] = float(w.mean()), 1.0 - float(w.mean())
            ci_low[i][j], ci_high[i][j] = low, high
            ci_low[j][i], ci_high[j][i] = 1.0 - high, 1.0 - low
            prompts[i][j] = prompts[j][i] = int(w.size)
    return {"names": names, "rate": rate, "ci_low": ci_low, "ci_high": ci_high, "prompts": prompts}


# ------------------------------------------------------------------ the Hitchhiker claims

def verdict(low: float, high: float) -> str:
    """Verdict from the 95% CI of a statistic oriented so that > 0 means the claim holds."""
    if low > 0:
        return "confirmed"
    if high < 0:
        return "reversed"
    return "not confirmed"


def _stratified_bootstrap_ci(groups, statistic: Callable, n_resamples: int = N_RESAMPLES,
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


def _seeds(runs) -> str:
    seeds = sorted({r.params["seed"] for r in runs if "seed" in r.params}, key=_sort_key)
    return "seeds " + ",".join(map(str, seeds)) if seeds else "seeds unrecorded"


def _grid(by: dict, methods) -> str:
    return "; ".join(f"{_label(m)}: {len(by[m])} runs ({_seeds(by[m])})" for m in methods)


def _claim(claim: str, statistic: str, n_runs: int, detail: str, value=None, ci=(None, None)) -> dict:
    tested = value is not None
    return {"claim": claim, "statistic": statistic, "value": float(value) if tested else None,
            "ci_low": ci[0], "ci_high": ci[1], "verdict": verdict(*ci) if tested else "not tested",
            "n_runs": n_runs, "detail": detail}


def _absent(by: dict, methods) -> str | None:
    """The 'not tested' detail when some of the methods have no runs, else None."""
    missing = [_label(m) for m in methods if not by.get(m)]
    return f"no {', '.join(missing)} runs in the sweep" if missing else None


def _lacking(runs, column: str) -> str | None:
    """The 'not tested' detail when some runs have no per-sample `column`, else None."""
    names = [r.name for r in runs if r.samples.get(column) is None]
    return f"column {column!r} absent in {', '.join(names)}" if names else None


def _best_paired_claim(by, a, b, column, claim, what, seed) -> dict:
    """Claim 'a − b > 0' on per-prompt `column` between the two methods' best runs."""
    statistic = (f"mean over shared prompts of {what}(best {_label(a)}) − {what}(best {_label(b)}), "
                 f"bootstrap 95% CI over prompts")
    n_runs = sum(len(by.get(m) or ()) for m in (a, b))
    missing = _absent(by, (a, b))
    if missing:
        return _claim(claim, statistic, n_runs, missing)
    best_a, best_b = best_run(by[a]), best_run(by[b])
    lacking = _lacking((best_a, best_b), column)
    if lacking:
        return _claim(claim, statistic, n_runs, lacking)
    d = paired_difference(best_a, best_b, column, seed=seed)
    detail = (f"best runs {best_a.name} vs {best_b.name}; {d['n']} shared prompts; {_grid(by, (a, b))}; "
              f"{N_RESAMPLES} resamples, seed {seed}")
    return _claim(claim, statistic, n_runs, detail, d["value"], (d["ci_low"], d["ci_high"]))


def _expected_score_claim(by, a, b, seed) -> dict:
    """Claim 'grid mean of a ≥ grid mean of b' over per-run scores."""
    claim = f"expected score: {_label(a)} ≥ {_label(b)}"
    statistic = (f"grid mean score of {_label(a)} − grid mean score of {_label(b)}, "
                 f"bootstrap 95% CI resampling runs within each method")
    n_runs = sum(len(by.get(m) or ()) for m in (a, b))
    missing = _absent(by, (a, b))
    if missing:
        return _claim(claim, statistic, n_runs, missing)
    scores = [[r.score for r in by[m]] for m in (a, b)]
    ci = _stratified_bootstrap_ci(scores, lambda x, y: x.mean() - y.mean(), seed=seed)
    detail = f"{_grid(by, (a, b))}; {N_RESAMPLES} resamples, seed {seed}"
    return _claim(claim, statistic, n_runs, detail, np.mean(scores[0]) - np.mean(scores[1]), ci)


def _worse_than_sft_claim(by, sft: RunRecord | None, seed) -> dict:
    """Claim 'DPO's grid has the largest share of runs worse than SFT'."""
    claim = "DPO is most often worse than SFT"
    statistic = ("fraction of DPO runs with score < SFT minus the largest such fraction among the "
                 "other methods, bootstrap 95% CI resampling runs within each method")
    others = [m for m in by if m not in ("sft", "dpo") and by[m]]
    n_runs = sum(len(by[m]) for m in others) + len(by.get("dpo") or ()) + (sft is not None)
    if sft is None:
        return _claim(claim, statistic, n_runs, "no SFT run to compare against")
    missing = _absent(by, ("dpo",)) or (None if others else "no method other than DPO in the sweep")
    if missing:
        return _claim(claim, statistic, n_runs, missing)
    # Resample the 0/1 indicators "run worse than SFT": their means are the fractions.
    worse = [[float(r.score < sft.score) for r in by[m]] for m in ["dpo"] + others]
    stat = lambda dpo, *rest: dpo.mean() - max(x.mean() for x in rest)  # noqa: E731
    ci = _stratified_bootstrap_ci(worse, stat, seed=seed)
    fractions = ", ".join(f"{_label(m)} {np.mean(w):.3f}" for m, w in zip(["dpo"] + others, worse))
    detail = (f"SFT run {sft.name} (score {sft.score:.4g}); fractions worse: {fractions}; "
              f"{_grid(by, ['dpo'] + others)}; {N_RESAMPLES} resamples, seed {seed}")
    return _claim(claim, statistic, n_runs, detail, stat(*map(np.asarray, worse)), ci)


def _drop_claim(by, other, seed) -> dict:
    """Claim 'DPO drops more than `other` from its best run to its top-25% run'."""
    claim = f"DPO drops more than {_label(other)} from best to top-25% run"
    statistic = (f"drop(DPO) − drop({_label(other)}), drop = mean gold of best run − mean gold of "
                 f"75th-percentile run on the prompts all four runs share, bootstrap 95% CI over prompts")
    n_runs = sum(len(by.get(m) or ()) for m in ("dpo", other))
    missing = _absent(by, ("dpo", other))
    if missing:
        return _claim(claim, statistic, n_runs, missing)
    picked = [best_run(by["dpo"]), percentile_run(by["dpo"]), best_run(by[other]), percentile_run(by[other])]
    lacking = _lacking(picked, "gold_score")
    if lacking:
        return _claim(claim, statistic, n_runs, lacking)
    g = _joined(picked, "gold_score")
    # The drop difference is a mean over prompts of g0 − g1 − g2 + g3, so resampling prompts jointly
    # for both drops is exactly a bootstrap of that per-prompt combination.
    per_prompt = g[0] - g[1] - g[2] + g[3]
    ci = bootstrap_ci(per_prompt, n_resamples=N_RESAMPLES, seed=seed)
    detail = (f"DPO {picked[0].name} → {picked[1].name}, {_label(other)} {picked[2].name} → "
              f"{picked[3].name}; {per_prompt.size} shared prompts; {_grid(by, ('dpo', other))}; "
              f"{N_RESAMPLES} resamples, seed {seed}")
    return _claim(claim, statistic, n_runs, detail, per_prompt.mean(), ci)


def hitchhiker_claims(runs_by_method: dict[str, list[RunRecord]], sft: RunRecord | None,
                      seed: int = 0) -> list[dict]:
    """The Hitchhiker study's claims tested on this sweep, one dict per comparison.

    Each: {"claim", "statistic", "value", "ci_low", "ci_high", "verdict", "n_runs", "detail"}; a
    claim whose methods are absent gets verdict "not tested" and value None. n_runs counts the runs
    of the compared methods' grids (plus the SFT run for the worse-than-SFT claim).
    """
    by = {m: list(runs) for m, runs in runs_by_method.items()}
    claims = []
    for a, b in (("simpo", "ln-dpo"), ("ln-dpo", "dpo")):
        claims.append(_best_paired_claim(by, a, b, "gold_score", f"best score: {_label(a)} ≥ {_label(b)}",
                                         "gold", seed))
    for a, b in (("simpo", "ln-dpo"), ("ln-dpo", "dpo")):
        claims.append(_expected_score_claim(by, a, b, seed))
    claims.append(_worse_than_sft_claim(by, sft, seed))
    for other in ("ln-dpo", "simpo"):
        claims.append(_best_paired_claim(by, "dpo", other, "length", f"{_label(other)} responses shorter "
                                         f"than DPO's", "length", seed))
    for other in ("ln-dpo", "simpo"):
        claims.append(_best_paired_claim(by, "dpo", other, "ln_kl", f"{_label(other)} closer to SFT in "
                                         f"length-normalised KL than DPO", "ln_kl", seed))
    for other in ("ln-dpo", "simpo"):
        claims.append(_drop_claim(by, other, seed))
    return claims


# ---------------------------------------------------------------- the VAR study (SPEC §6 items 7–9)

VAR_PAPER_GAIN_PCT = 7.16  # VAR paper: average reward 7.16% above DPO's
VAR_PAPER_SPEEDUP = 5.0    # VAR paper: converges more than 5× faster than GRPO


def _resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n] how often each of n prompts is drawn in each bootstrap resample.

    Drawn as metrics.bootstrap_ci draws, so with the same seed the resamples are the same ones. A
    resampled mean of every column of a [n_columns, n] table is then one product, counts @ table.T / n,
    without materialising the [n_resamples, n_columns, n] table of resampled values.
    """
    picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = (picks + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def _mean_with_ci(values, seed: int) -> dict:
    low, high = bootstrap_ci(values, n_resamples=N_RESAMPLES, seed=seed)
    return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}


def reward_by_family(run: RunRecord, families: dict[str, str] | None, seed: int = 0) -> dict:
    """Mean gold (and proxy, where scored) reward of one run, over all prompts and per prompt family.

    families maps prompt_id → family ("helpful", "harmful", …); prompts it does not name count only
    towards "all". Returns {family: {"n", "gold": {"mean", "ci_low", "ci_high"}, "proxy": … or None}},
    "all" first, then the families present in sorted order; each CI is a bootstrap over the prompts.
    The gold/proxy gap per family is where reward over-optimisation shows (SPEC §4).
    """
    ids = [str(p) for p in run.samples["prompt_id"]]
    gold = np.asarray(run.samples["gold_score"], dtype=np.float64)
    proxy = run.samples.get("proxy_score")
    proxy = None if proxy is None else np.asarray(proxy, dtype=np.float64)
    # Keys compared as text, as _column does: ids read back from JSON may be str where they were int.
    family_of = {str(p): f for p, f in (families or {}).items()}
    groups = {"all": np.ones(len(ids), dtype=bool)}
    for family in sorted({family_of[p] for p in ids if p in family_of}):
        groups[family] = np.array([family_of.get(p) == family for p in ids])
    return {family: {"n": int(mask.sum()), "gold": _mean_with_ci(gold[mask], seed),
                     "proxy": None if proxy is None else _mean_with_ci(proxy[mask], seed)}
            for family, mask in groups.items()}


def var_vs_dpo_claim(var: RunRecord, dpo: RunRecord, seed: int = 0) -> dict:
    """The VAR paper's "average reward +7.16% over DPO", tested on our prompts with the gold reward.

    The verdict tests the direction: the paired per-prompt difference gold(VAR) − gold(DPO) on the
    shared prompts, bootstrap CI over prompts. The size is reported next to it as the relative gain
        gain_pct = 100 · (mean_VAR − mean_DPO) / |mean_DPO|
    (|·| so that a gain stays positive when rewards are negative), with a paired bootstrap CI: each
    resample draws one set of prompts and recomputes both means from it. gain_pct is None when
    |mean_DPO| < 1e-9, where a percentage means nothing. Returns analysis._claim's dict plus
    "gain_pct" and "gain_pct_ci" (a (low, high) tuple).
    """
    claim = f"VAR's average reward is {VAR_PAPER_GAIN_PCT:+.2f}% above DPO's"
    statistic = ("mean over shared prompts of gold(VAR) − gold(DPO), bootstrap 95% CI over prompts; "
                 "size: gain_pct = 100·(mean VAR − mean DPO)/|mean DPO|, paired bootstrap 95% CI")
    lacking = _lacking((var, dpo), "gold_score")
    if lacking:
        return {**_claim(claim, statistic, 2, lacking), "gain_pct": None, "gain_pct_ci": (None, None)}
    table = _joined([var, dpo], "gold_score")
    d = paired_difference(var, dpo, "gold_score", seed=seed)
    mean_var, mean_dpo = table.mean(axis=1)
    gain_pct, gain_ci = None, (None, None)
    if abs(mean_dpo) >= 1e-9:
        gain_pct = float(100 * (mean_var - mean_dpo) / abs(mean_dpo))
        resampled_var, resampled_dpo = (_resample_counts(table.shape[1], N_RESAMPLES, seed) @ table.T
                                        / table.shape[1]).T
        with np.errstate(divide="ignore", invalid="ignore"):
            gains = 100 * (resampled_var - resampled_dpo) / np.abs(resampled_dpo)
        # A resample whose DPO mean is exactly 0 has no percentage; it is left out rather than infinite.
        gains = gains[np.isfinite(gains)]
        gain_ci = (float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5)))
    detail = (f"VAR run {var.name} (mean gold {mean_var:.4g}) vs DPO run {dpo.name} (mean gold "
              f"{mean_dpo:.4g}); {d['n']} shared prompts; training {_seeds([var, dpo])}; "
              f"{N_RESAMPLES} resamples, seed {seed}")
    return {**_claim(claim, statistic, 2, detail, d["value"], (d["ci_low"], d["ci_high"])),
            "gain_pct": gain_pct, "gain_pct_ci": gain_ci}


def _gold_by_prompt(point: dict) -> dict:
    """{prompt_id (as text): gold score} of one evaluation point."""
    ids = [str(p) for p in point["prompt_id"]]
    if len(set(ids)) != len(ids):
        raise ValueError("an evaluation point has several samples for one prompt_id")
    return dict(zip(ids, np.asarray(point["gold_score"], dtype=np.float64)))


def _first_crossing(x: np.ndarray, curves: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Where each row of curves first reaches its target, linearly interpolated along x; NaN if never.

    curves is [rows, points] with x[0] = 0 the start; the first point k with curve[k] ≥ target gives
        x[k−1] + (target − curve[k−1]) / (curve[k] − curve[k−1]) · (x[k] − x[k−1]),
    or x[0] when the start already reaches it (curve[k−1] < target ≤ curve[k] keeps the division safe).
    """
    reached = curves >= target[:, None]
    k = reached.argmax(axis=1)
    rows = np.arange(len(curves))
    before = np.maximum(k - 1, 0)
    rise = curves[rows, k] - curves[rows, before]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(k > 0, (target - curves[rows, before]) / rise, 0.0)  # k = 0 divides 0 by 0, unused
    crossing = x[before] + step * (x[k] - x[before])
    return np.where(reached.any(axis=1), crossing, np.nan)


def convergence_race(curves: dict[str, list[dict]], start: dict, seed: int = 0, target_fraction: float = 0.9,
                     n_resamples: int = N_RESAMPLES, reward: str = "gold") -> dict:
    """The VAR paper's "converges more than 5× faster than GRPO", as a race to a common gold reward.

    curves maps each method ("var", "grpo" required; "dpo", … optional) to its evaluation points in
    training order, each {"seconds", "samples" (training responses seen so far), "prompt_id",
    "gold_score"}; start is the model they all start from (SFT), at 0 seconds and 0 samples. A point
    may repeat the start's scores at a later time (a run's setup: no training yet, time spent). Points
    are aligned by prompt_id on the prompts every point and the start share.

        target = start + target_fraction · (grpo_final − start)

    i.e. 90% of GRPO's final *improvement*: rewards can be negative, so a fraction of the raw reward
    would not lie between the start and GRPO's final level. Each method's time to target is the first
    crossing of its curve (start prepended), linearly interpolated, on both axes; speedup =
    seconds_to_target(GRPO) / seconds_to_target(VAR), samples_ratio likewise with samples. CIs resample
    the prompts, one draw shared by every point and the start, and recompute everything from the
    means; a resample where VAR never reaches the target counts as speedup 0, one where GRPO does not
    improve is dropped (there is no race to run). Verdict: "not testable" when GRPO does not improve
    on the start; "confirmed" when the speedup CI is above 5; "reversed" when it is below 1 (VAR
    slower, or never there); else "not confirmed". `reward` names the reward in the explanation (the
    "gold_score" column may carry another reward, e.g. the proxy's).
    """
    missing = [m for m in ("grpo", "var") if not curves.get(m)]
    if missing:
        raise ValueError(f"convergence race needs evaluation points for {' and '.join(missing)}")
    if not 0 < target_fraction <= 1:
        # Above 1 GRPO itself might never get there; at 0 every method is there at time 0.
        raise ValueError(f"target_fraction must be in (0, 1], got {target_fraction}")
    start_table = _gold_by_prompt(start)
    point_tables = {m: [_gold_by_prompt(p) for p in points] for m, points in curves.items()}
    every_table = [start_table] + [t for tables in point_tables.values() for t in tables]
    shared = [p for p in start_table if all(p in t for t in every_table)]
    if not shared:
        raise ValueError("no prompt shared by the start and every evaluation point")
    # Row 0 of each method's table is the start, so crossings before the first evaluation interpolate from it.
    gold = {m: np.array([[t[p] for p in shared] for t in [start_table] + tables]) for m, tables in point_tables.items()}
    axes = {}
    for m, points in curves.items():
        for axis in ("seconds", "samples"):
            x = np.array([0.0] + [float(p[axis]) for p in points])
            if np.any(np.diff(x) < 0):
                raise ValueError(f"{m}: {axis} must not decrease along the curve")
            axes[m, axis] = x

    def race(weights: np.ndarray) -> dict:
        """Everything the race computes, for each row of prompt weights (rows sum to 1)."""
        means = {m: weights @ table.T for m, table in gold.items()}  # [rows, 1 + points]
        start_mean, grpo_final = means["grpo"][:, 0], means["grpo"][:, -1]
        target = start_mean + target_fraction * (grpo_final - start_mean)
        to_target = {axis: {m: _first_crossing(axes[m, axis], means[m], target) for m in gold}
                     for axis in ("seconds", "samples")}
        # Rows where GRPO does not improve have VAR there at 0 (0/0): they are dropped, hence the errstate.
        with np.errstate(divide="ignore", invalid="ignore"):
            # VAR never there → 0: slower than any finite speedup, and the resample stays in the CI.
            ratio = {axis: np.nan_to_num(to_target[axis]["grpo"] / to_target[axis]["var"], nan=0.0)
                     for axis in to_target}
        return {"start": start_mean, "grpo_final": grpo_final, "target": target,
                "final": {m: means[m][:, -1] for m in gold}, "to_target": to_target, "ratio": ratio}

    n = len(shared)
    point = race(np.full((1, n), 1.0 / n))
    start_reward, grpo_final, target = (float(point[k][0]) for k in ("start", "grpo_final", "target"))
    testable = grpo_final > start_reward

    def reached(m: str, axis: str) -> float | None:
        crossing = point["to_target"][axis][m][0]
        return None if not testable or np.isnan(crossing) else float(crossing)

    methods = {m: {"seconds_to_target": reached(m, "seconds"), "samples_to_target": reached(m, "samples"),
                   "final_reward": float(point["final"][m][0])} for m in gold}
    result = {"start_reward": start_reward, "grpo_final": grpo_final, "target": target,
              "target_fraction": float(target_fraction), "methods": methods, "speedup": None,
              "samples_ratio": None}
    if not testable:
        reason = (f"GRPO did not improve the {reward} reward (start {start_reward:.4g}, final {grpo_final:.4g}), "
                  f"so there is no target to race to")
        return {**result, "verdict": "not testable", "reason": reason}

    resampled = race(_resample_counts(n, n_resamples, seed) / n)
    kept = resampled["grpo_final"] > resampled["start"]
    for key, axis in (("speedup", "seconds"), ("samples_ratio", "samples")):
        ratios = resampled["ratio"][axis][kept]
        result[key] = {"value": float(point["ratio"][axis][0]), "ci_low": float(np.percentile(ratios, 2.5)),
                       "ci_high": float(np.percentile(ratios, 97.5))}
    low, high = result["speedup"]["ci_low"], result["speedup"]["ci_high"]
    evidence = (f"speedup {result['speedup']['value']:.3g}× (95% CI {low:.3g}–{high:.3g}; {int(kept.sum())} of "
                f"{n_resamples} resamples over {n} prompts, seed {seed})")
    if low > VAR_PAPER_SPEEDUP:
        outcome, reason = "confirmed", f"{evidence} lies above the paper's {VAR_PAPER_SPEEDUP:g}×"
    elif high < 1:
        outcome, reason = "reversed", f"{evidence} lies below 1×: VAR reaches the target later than GRPO, or never"
    else:
        outcome, reason = "not confirmed", f"{evidence} does not lie above {VAR_PAPER_SPEEDUP:g}×"
    return {**result, "verdict": outcome, "reason": reason}


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ exp(a) over the last axis, shifted by the max so that summed log-probs (≈ −1000) do not underflow."""
    top = a.max(axis=-1)
    return top + np.log(np.exp(a - top[..., None]).sum(axis=-1))


def z_estimator_variance(ref_logps, rewards, lam: float, batch_sizes=(2, 4, 8, 16, 32, 64), draws: int = 200,
                         seed: int = 0) -> list[dict]:
    """How noisy VAR's in-batch normaliser is, against the micro-batch size b (SPEC §3, §6 item 9).

    With a_i = ℓref(y_i) + r_i/λ, VAR weights the responses of a micro-batch B by
        ω_i = exp(a_i) / Σ_{j∈B} exp(a_j)          (a softmax of a over B)
    and so estimates log Z by log((1/b) Σ_{j∈B} exp(a_j)). For each b, `draws` micro-batches of b
    responses are drawn uniformly without replacement, and each row reports
        log_z_mean, log_z_sd   mean and (population) sd of the log Z estimate across draws;
        weight_sd              sd of b·ω_i pooled over draws and members: 0 when the weights are uniform;
        ess_fraction           mean of (1/Σ ω_i²)/b, the effective sample size as a share of the batch:
                               1 when uniform, 1/b when one response takes all the weight;
        max_weight             mean of max_i ω_i.
    Batch sizes above the number of responses are skipped.
    """
    a = np.asarray(ref_logps, dtype=np.float64) + np.asarray(rewards, dtype=np.float64) / lam
    rng = np.random.default_rng(seed)
    rows = []
    for b in batch_sizes:
        if b > a.size:
            continue
        # Each row is an independent random permutation: its first b entries are a uniform b-subset.
        members = rng.permuted(np.tile(np.arange(a.size), (draws, 1)), axis=1)[:, :b]
        batch = a[members]                                   # [draws, b]
        log_sum = _logsumexp(batch)
        log_z = log_sum - np.log(b)
        weights = np.exp(batch - log_sum[:, None])           # softmax: each row sums to 1
        rows.append({"batch_size": int(b), "log_z_mean": float(log_z.mean()), "log_z_sd": float(log_z.std()),
                     "weight_sd": float(np.std(b * weights)),
                     "ess_fraction": float(np.mean(1 / (weights ** 2).sum(axis=1) / b)),
                     "max_weight": float(np.mean(weights.max(axis=1)))})
    return rows
