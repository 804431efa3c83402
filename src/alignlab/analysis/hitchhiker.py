"""Robustness analyses of a hyper-parameter sweep (SPEC §6 items 1–6, the "Hitchhiker" analyses).

Everything here is a pure function of plain Python / numpy data: no plotting, no file IO, no torch.
A sweep is a list of RunRecord, one per trained model, holding its hyper-parameters, its summary
metrics (as metrics.summarize returns them) and its per-sample evaluation columns.

Definitions
    expected perf.   the mean over the grid of per-run scores, with a bootstrap CI over runs.
    fraction worse   the share of runs whose score is below a baseline (SFT), with a Wilson interval.

Scores, rankings and run selections are defined in alignlab.analysis.runs; verdicts in
alignlab.analysis.stats. All CIs are percentile bootstraps at 95%, seeded, with N_RESAMPLES resamples.
"""

from __future__ import annotations

import numpy as np

from alignlab.analysis.runs import (RunRecord, best_run, joined_on_prompts, lacking_column, method_label, metric_value,
                                    paired_difference, param_sort_key, percentile_run, seeds_text, top_k_runs)
from alignlab.analysis.stats import N_RESAMPLES, claim_record, stratified_bootstrap_ci, wilson_interval
from alignlab.evaluation.metrics import bootstrap_ci


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
            for v in sorted(groups, key=param_sort_key)]


# ------------------------------------------------------------------ the Hitchhiker claims

def _grid(by: dict, methods) -> str:
    return "; ".join(f"{method_label(m)}: {len(by[m])} runs ({seeds_text(by[m])})" for m in methods)


def _absent(by: dict, methods) -> str | None:
    """The 'not tested' detail when some of the methods have no runs, else None."""
    missing = [method_label(m) for m in methods if not by.get(m)]
    return f"no {', '.join(missing)} runs in the sweep" if missing else None


def _best_paired_claim(by, a, b, column, claim, what, seed) -> dict:
    """Claim 'a − b > 0' on per-prompt `column` between the two methods' best runs."""
    statistic = (f"mean over shared prompts of {what}(best {method_label(a)}) − {what}(best {method_label(b)}), "
                 f"bootstrap 95% CI over prompts")
    n_runs = sum(len(by.get(m) or ()) for m in (a, b))
    missing = _absent(by, (a, b))
    if missing:
        return claim_record(claim, statistic, n_runs, missing)
    best_a, best_b = best_run(by[a]), best_run(by[b])
    lacking = lacking_column((best_a, best_b), column)
    if lacking:
        return claim_record(claim, statistic, n_runs, lacking)
    d = paired_difference(best_a, best_b, column, seed=seed)
    detail = (f"best runs {best_a.name} vs {best_b.name}; {d['n']} shared prompts; {_grid(by, (a, b))}; "
              f"{N_RESAMPLES} resamples, seed {seed}")
    return claim_record(claim, statistic, n_runs, detail, d["value"], (d["ci_low"], d["ci_high"]))


def _expected_score_claim(by, a, b, seed) -> dict:
    """Claim 'grid mean of a ≥ grid mean of b' over per-run scores."""
    claim = f"expected score: {method_label(a)} ≥ {method_label(b)}"
    statistic = (f"grid mean score of {method_label(a)} − grid mean score of {method_label(b)}, "
                 f"bootstrap 95% CI resampling runs within each method")
    n_runs = sum(len(by.get(m) or ()) for m in (a, b))
    missing = _absent(by, (a, b))
    if missing:
        return claim_record(claim, statistic, n_runs, missing)
    scores = [[r.score for r in by[m]] for m in (a, b)]
    ci = stratified_bootstrap_ci(scores, lambda x, y: x.mean() - y.mean(), seed=seed)
    detail = f"{_grid(by, (a, b))}; {N_RESAMPLES} resamples, seed {seed}"
    return claim_record(claim, statistic, n_runs, detail, np.mean(scores[0]) - np.mean(scores[1]), ci)


def _worse_than_sft_claim(by, sft: RunRecord | None, seed) -> dict:
    """Claim 'DPO's grid has the largest share of runs worse than SFT'."""
    claim = "DPO is most often worse than SFT"
    statistic = ("fraction of DPO runs with score < SFT minus the largest such fraction among the "
                 "other methods, bootstrap 95% CI resampling runs within each method")
    others = [m for m in by if m not in ("sft", "dpo") and by[m]]
    n_runs = sum(len(by[m]) for m in others) + len(by.get("dpo") or ()) + (sft is not None)
    if sft is None:
        return claim_record(claim, statistic, n_runs, "no SFT run to compare against")
    missing = _absent(by, ("dpo",)) or (None if others else "no method other than DPO in the sweep")
    if missing:
        return claim_record(claim, statistic, n_runs, missing)
    # Resample the 0/1 indicators "run worse than SFT": their means are the fractions.
    worse = [[float(r.score < sft.score) for r in by[m]] for m in ["dpo"] + others]
    stat = lambda dpo, *rest: dpo.mean() - max(x.mean() for x in rest)  # noqa: E731
    ci = stratified_bootstrap_ci(worse, stat, seed=seed)
    fractions = ", ".join(f"{method_label(m)} {np.mean(w):.3f}" for m, w in zip(["dpo"] + others, worse))
    detail = (f"SFT run {sft.name} (score {sft.score:.4g}); fractions worse: {fractions}; "
              f"{_grid(by, ['dpo'] + others)}; {N_RESAMPLES} resamples, seed {seed}")
    return claim_record(claim, statistic, n_runs, detail, stat(*map(np.asarray, worse)), ci)


def _drop_claim(by, other, seed) -> dict:
    """Claim 'DPO drops more than `other` from its best run to its top-25% run'."""
    claim = f"DPO drops more than {method_label(other)} from best to top-25% run"
    statistic = (f"drop(DPO) − drop({method_label(other)}), drop = mean gold of best run − mean gold of "
                 f"75th-percentile run on the prompts all four runs share, bootstrap 95% CI over prompts")
    n_runs = sum(len(by.get(m) or ()) for m in ("dpo", other))
    missing = _absent(by, ("dpo", other))
    if missing:
        return claim_record(claim, statistic, n_runs, missing)
    picked = [best_run(by["dpo"]), percentile_run(by["dpo"]), best_run(by[other]), percentile_run(by[other])]
    lacking = lacking_column(picked, "gold_score")
    if lacking:
        return claim_record(claim, statistic, n_runs, lacking)
    g = joined_on_prompts(picked, "gold_score")
    # The drop difference is a mean over prompts of g0 − g1 − g2 + g3, so resampling prompts jointly
    # for both drops is exactly a bootstrap of that per-prompt combination.
    per_prompt = g[0] - g[1] - g[2] + g[3]
    ci = bootstrap_ci(per_prompt, n_resamples=N_RESAMPLES, seed=seed)
    detail = (f"DPO {picked[0].name} → {picked[1].name}, {method_label(other)} {picked[2].name} → "
              f"{picked[3].name}; {per_prompt.size} shared prompts; {_grid(by, ('dpo', other))}; "
              f"{N_RESAMPLES} resamples, seed {seed}")
    return claim_record(claim, statistic, n_runs, detail, per_prompt.mean(), ci)


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
        claims.append(_best_paired_claim(by, a, b, "gold_score", f"best score: {method_label(a)} ≥ {method_label(b)}",
                                         "gold", seed))
    for a, b in (("simpo", "ln-dpo"), ("ln-dpo", "dpo")):
        claims.append(_expected_score_claim(by, a, b, seed))
    claims.append(_worse_than_sft_claim(by, sft, seed))
    for other in ("ln-dpo", "simpo"):
        claims.append(_best_paired_claim(by, "dpo", other, "length", f"{method_label(other)} responses shorter "
                                         f"than DPO's", "length", seed))
    for other in ("ln-dpo", "simpo"):
        claims.append(_best_paired_claim(by, "dpo", other, "ln_kl", f"{method_label(other)} closer to SFT in "
                                         f"length-normalised KL than DPO", "ln_kl", seed))
    for other in ("ln-dpo", "simpo"):
        claims.append(_drop_claim(by, other, seed))
    return claims

