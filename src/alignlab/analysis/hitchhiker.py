"""The Hitchhiker analyses (SPEC §6 items 1–6) on configurations with replicate seeds: the claims,
expected best-of-k curves, pooled top-k% distributions and sensitivity.

Everything here is a pure function of plain Python / numpy data: no plotting, no file IO, no torch.
Picks are made on the selection half with each configuration's ranking seeds, and every number is
computed on the reporting half, a pick's over its reporting seeds only (alignlab.analysis.replicates:
the data that ranks a configuration never reports it); each claim's estimate comes from the report's
two-level bootstrap and its verdict from alignlab.analysis.claims.decide (Holm within its family:
primary or secondary).

Claims (each oriented so that a positive value supports it)
    best score: A ≥ B           reported mean gold of A's best configuration − B's best (each on its
                                reporting seeds; a method of one configuration on all of them)
    expected score: A ≥ B       expected best-of-k of A − of B at the equal budget k = 1: a configuration
                                drawn at random, i.e. the grid mean (Hitchhiker's "expected performance").
                                It pools every configuration's seeds, so it is the most powerful of the
                                claims; the report's curves show every other k
    DPO most often worse        share of DPO configurations shown worse than SFT (CI below SFT's mean) −
                                that share over LN-DPO's and SimPO's (the Hitchhiker methods), by
                                Fisher's exact test on the counts (`_worse_than_sft_claim`)
    X shorter than DPO          length of DPO's best − X's best (and likewise length-normalised KL)
    DPO drops more than X       (best − top-25%) of DPO − (best − top-25%) of X, on gold
    X ≥ DPO (other methods)     best and expected score of each method outside the papers' (TRL's DPO
                                variants, ORPO, KTO) against DPO's (`variant_claims`)
"""

from __future__ import annotations

import numpy as np

from alignlab.analysis.claims import tested, tested_estimate, untested
from alignlab.analysis.replicates import Configuration, SweepEvidence
from alignlab.analysis.runs import best_run, method_label, metric_value, param_sort_key, percentile_run, top_k_runs
from alignlab.evidence import estimate, expected_max_weights
from alignlab.evidence.bootstrap import combine
from alignlab.evidence.shares import compare_shares


# ------------------------------------------------------------------ grid-level statistics

def expected_max_curve(ev: SweepEvidence, configs: list[Configuration]) -> list[dict]:
    """Expected best-of-k reported mean gold for k = 1 … n, each {k, mean, ci} (alignlab.evidence.budget)."""
    curve = []
    for k in range(1, len(configs) + 1):
        e = estimate(_expected_max(ev, configs, k))
        curve.append({"k": k, "mean": e.value, "ci": list(e.ci)})
    return curve


def _expected_max(ev: SweepEvidence, configs: list[Configuration], k: int):
    """Σ_i P(rank i is a k-search's pick) · reported mean of rank i. A search of k ≥ 2 picks on the
    ranking seeds, so each configuration reports on its other seeds; k = 1 ranks nothing (the grid
    mean), so every seed reports."""
    ranked = sorted(configs, key=lambda c: (c.score, c.name))  # ascending: rank 1 is the worst
    means = [ev.mean(c if k == 1 else ev.picked(c)) for c in ranked]
    weights = expected_max_weights(len(ranked), k)
    return combine(lambda *m: sum(w * x for w, x in zip(weights, m)), *means)


def top_k_pooled(ev: SweepEvidence, configs: list[Configuration], ks, column: str) -> dict[int, list[float]]:
    """Per k, the per-sample values of `column` pooled over the top-k% configurations (picked on the
    selection half and their ranking seeds), their reporting seeds, on the reporting half; empty where
    the column was not measured."""
    out = {}
    for k in ks:
        picked = [ev.picked(c) for c in top_k_runs(configs, k) if c.has(column)]
        out[k] = [float(v) for c in picked for v in ev.reported(c, column).ravel()]
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

def behind(ev: SweepEvidence, methods) -> tuple[int, list]:
    """Runs and distinct training seeds of the compared methods' grids."""
    configs = [c for m in methods for c in ev.by_method.get(m, [])]
    seeds = sorted({s for c in configs for s in c.seeds if s is not None}, key=param_sort_key)
    return sum(len(c.runs) for c in configs), seeds


def _grid(ev: SweepEvidence, methods) -> str:
    return "; ".join(f"{method_label(m)}: {len(ev.by_method[m])} configurations × "
                     f"{'/'.join(sorted({str(len(c.runs)) for c in ev.by_method[m]}))} seeds" for m in methods)


def absent_methods(ev: SweepEvidence, methods) -> str | None:
    """The "not tested" reason when some of the methods have no runs, else None."""
    missing = [method_label(m) for m in methods if not ev.by_method.get(m)]
    return f"no {', '.join(missing)} runs in the sweep" if missing else None


def _lacking(configs, column: str) -> str | None:
    names = [c.name for c in configs if not c.has(column)]
    return f"column {column!r} absent in {', '.join(names)}" if names else None


def reported_on(config: Configuration) -> str:
    """A configuration's name and the seeds its reported mean is over (a pick's: its reporting seeds)."""
    return f"{config.name} (reported on seeds {', '.join(map(str, config.seeds))})"


def _best_claim(ev, a, b, column, claim, statistic) -> dict:
    """'a − b > 0' on the reported mean of `column` between the two methods' best configurations."""
    runs, seeds = behind(ev, (a, b))
    missing = absent_methods(ev, (a, b))
    if missing:
        return untested(claim, statistic, missing, runs)
    best_a, best_b = ev.picked(best_run(ev.by_method[a])), ev.picked(best_run(ev.by_method[b]))
    lacking = _lacking((best_a, best_b), column)
    if lacking:
        return untested(claim, statistic, lacking, runs)
    detail = f"best configurations {reported_on(best_a)} vs {reported_on(best_b)}; {_grid(ev, (a, b))}"
    return tested(claim, statistic, ev.difference(ev.mean(best_a, column), ev.mean(best_b, column)), detail,
                  runs, seeds)


def expected_claim(ev, a, b) -> dict:
    """'a − b > 0' on the grid means (expected best-of-1): every configuration's every seed reports."""
    claim = f"expected score: {method_label(a)} ≥ {method_label(b)}"
    statistic = (f"expected best-of-1 mean gold (the grid mean) of {method_label(a)} − of {method_label(b)}, "
                 f"at the equal search budget k = 1")
    runs, seeds = behind(ev, (a, b))
    missing = absent_methods(ev, (a, b))
    if missing:
        return untested(claim, statistic, missing, runs)
    k = 1
    curves = [_expected_max(ev, ev.by_method[m], k) for m in (a, b)]
    return tested(claim, statistic, ev.difference(*curves), f"budget k = {k}; {_grid(ev, (a, b))}", runs, seeds)


# The Hitchhiker paper's methods in this project (SPEC §6, "From Hitchhiker"): "DPO is most often worse
# than SFT" compares DPO's grid with theirs, not with VAR's or a variant's.
HITCHHIKER_METHODS = ("dpo", "ln-dpo", "simpo")


def worse_than_sft(ev: SweepEvidence, config: Configuration) -> bool:
    """Whether a configuration is shown worse than SFT: the 95% CI of its reported mean gold − SFT's
    (the report's two-level bootstrap, seeds and prompts) lies below 0."""
    return estimate(ev.difference(ev.mean(config), ev.baseline_mean())).ci[1] < 0


def _worse_than_sft_claim(ev) -> dict:
    """DPO is most often worse than SFT: the share of DPO's configurations shown worse than SFT against
    that share over the other Hitchhiker methods' configurations (LN-DPO, SimPO), by Fisher's exact test
    (alignlab.evidence.shares).

    Why this test. The sampling unit of a share of configurations is the configuration: a grid is a
    handful of draws from each method's hyper-parameter space, and a bootstrap of the share over seeds
    and prompts holds the configurations fixed, so where no configuration is near SFT it sees no
    variation at all and reads that as certainty. Fisher's test conditions on how many configurations
    are worse in all, and asks how surprising it is that so many of them are DPO's when the method label
    does not matter (configurations exchangeable across methods): exact for any grid size, and p = 1
    when no configuration, or every one, is worse. A configuration counts as worse only when its own data
    show it (its CI below SFT's mean), not when its point estimate happens to fall below: under "no
    method differs from SFT" each configuration is then flagged with probability ≤ 2.5% whatever its
    seed noise, so a method with noisy seeds is not flagged more often than a quiet one. Where true
    means differ from SFT a quiet method is shown worse more readily than a noisy one at the same true
    mean: the test compares what the grids show, as its statistic's text says. The simulations of
    tests/analysis/test_hitchhiker.py (seed sd 6× apart between methods, configurations at or spread
    around SFT's mean, DPO the quietest) keep its one-sided false-positive rate at or below 2.5%.
    """
    claim = "DPO is most often worse than SFT"
    statistic = ("share of DPO configurations shown worse than SFT (95% CI of mean gold − SFT's below 0) − that "
                 "share over the LN-DPO and SimPO configurations; Fisher's exact test")
    others = [m for m in HITCHHIKER_METHODS[1:] if ev.by_method.get(m)]
    runs, seeds = behind(ev, ["dpo", *others])
    if ev.sft is None:
        return untested(claim, statistic, "no SFT run to compare against", runs)
    missing = absent_methods(ev, ("dpo",)) or (None if others else "no LN-DPO or SimPO runs in the sweep")
    if missing:
        return untested(claim, statistic, missing, runs)
    dpo = [worse_than_sft(ev, c) for c in ev.by_method["dpo"]]
    rest = [worse_than_sft(ev, c) for m in others for c in ev.by_method[m]]
    configs = {c.name: len(c.runs) for m in ("dpo", *others) for c in ev.by_method[m]}
    detail = (f"DPO {sum(dpo)} of {len(dpo)} configurations shown worse, "
              f"{' and '.join(method_label(m) for m in others)} {sum(rest)} of {len(rest)}; {_grid(ev, ['dpo', *others])}")
    return tested_estimate(claim, statistic, compare_shares(sum(dpo), len(dpo), sum(rest), len(rest)), detail,
                           runs, seeds, len(ev.reporting), configs)


def _drop_claim(ev, other) -> dict:
    claim = f"DPO drops more than {method_label(other)} from best to top-25% configuration"
    statistic = (f"drop(DPO) − drop({method_label(other)}), drop = reported mean gold of the best configuration "
                 f"− of the 75th-percentile one (both picked on the selection half and ranking seeds, "
                 f"reported on their other seeds)")
    runs, seeds = behind(ev, ("dpo", other))
    missing = absent_methods(ev, ("dpo", other))
    if missing:
        return untested(claim, statistic, missing, runs)
    picked = [ev.picked(pick(ev.by_method[m])) for m in ("dpo", other) for pick in (best_run, percentile_run)]
    detail = (f"DPO {picked[0].name} → {picked[1].name}, {method_label(other)} {picked[2].name} → "
              f"{picked[3].name}; {_grid(ev, ('dpo', other))}")
    if picked[0] is picked[1] and picked[2] is picked[3]:
        return untested(claim, statistic, f"one configuration per method: best and top-25% coincide; {detail}", runs)
    quantity = combine(lambda a, b, c, d: (a - b) - (c - d), *(ev.mean(c) for c in picked))
    return tested(claim, statistic, quantity, detail, runs, seeds)


def hitchhiker_claims(ev: SweepEvidence) -> list[dict]:
    """The Hitchhiker study's claims on this sweep (undecided: alignlab.analysis.claims.decide sets
    the verdicts across the whole report)."""
    claims = []
    for a, b in (("simpo", "ln-dpo"), ("ln-dpo", "dpo")):
        claims.append(_best_claim(ev, a, b, "gold_score", f"best score: {method_label(a)} ≥ {method_label(b)}",
                                  f"reported mean gold of the best {method_label(a)} − the best {method_label(b)} "
                                  f"configuration"))
    for a, b in (("simpo", "ln-dpo"), ("ln-dpo", "dpo")):
        claims.append(expected_claim(ev, a, b))
    claims.append(_worse_than_sft_claim(ev))
    for column, what in (("length", "responses shorter than DPO's"),
                         ("ln_kl", "closer to SFT in length-normalised KL than DPO")):
        for other in ("ln-dpo", "simpo"):
            claims.append(_best_claim(ev, "dpo", other, column, f"{method_label(other)} {what}",
                                      f"reported mean {column} of the best DPO − the best {method_label(other)} "
                                      f"configuration"))
    for other in ("ln-dpo", "simpo"):
        claims.append(_drop_claim(ev, other))
    return claims


# The methods of the two source papers, which the claims above and the VAR claims cover.
PAPER_METHODS = ("sft", "dpo", "ln-dpo", "simpo", "var")


def variant_claims(ev: SweepEvidence, reference: str | None = None) -> list[dict]:
    """Each other method of the sweep (TRL's DPO variants, ORPO, KTO, a scores table's own methods, ...)
    against `reference` — by default DPO or, without DPO runs, the first of them: best score and expected
    score, as the Hitchhiker claims compare the papers' methods. Tuned DPO variants often tie (Tang et
    al. 2024, GPO); these claims say whether this sweep can tell them apart."""
    others = [m for m in ev.by_method if m not in PAPER_METHODS]
    baseline = reference or ("dpo" if ev.by_method.get("dpo") else (others[0] if others else None))
    claims = []
    for method in (m for m in others if m != baseline):
        claims.append(_best_claim(ev, method, baseline, "gold_score",
                                  f"best score: {method_label(method)} ≥ {method_label(baseline)}",
                                  f"reported mean gold of the best {method_label(method)} − the best "
                                  f"{method_label(baseline)} configuration"))
        claims.append(expected_claim(ev, method, baseline))
    return claims
