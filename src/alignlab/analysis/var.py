"""The VAR study's analyses (SPEC §6 items 7–9): VAR against DPO, the convergence race against GRPO,
reward per prompt family and the noise of VAR's in-batch normaliser.

Everything here is a pure function of plain Python / numpy data: no plotting, no file IO, no torch.
Runs and their per-prompt joins are defined in alignlab.analysis.runs; verdicts, bootstrap resamples
and claim records in alignlab.analysis.stats.
"""

from __future__ import annotations

import numpy as np

from alignlab.analysis.claims import tested, untested
from alignlab.analysis.hitchhiker import absent_methods, behind, reported_on
from alignlab.analysis.replicates import SweepEvidence
from alignlab.analysis.runs import best_run
from alignlab.analysis.stats import logsumexp
from alignlab.evidence import N_RESAMPLES, estimate
from alignlab.evidence.bootstrap import combine, resample_counts
from alignlab.evidence.ratio import FiellerInterval, ratio_interval

VAR_PAPER_GAIN_PCT = 7.16  # VAR paper: average reward 7.16% above DPO's
VAR_PAPER_SPEEDUP = 5.0    # VAR paper: converges more than 5× faster than GRPO
VAR_PAPER_RATIO = 1 + VAR_PAPER_GAIN_PCT / 100
# The decided VAR claims (alignlab.analysis.claims): VAR's grid mean against DPO's (made with the other
# expected-score claims: alignlab.analysis.report_claims), and the two on the best configurations here;
# everything else var_vs_dpo_descriptives returns is descriptive.
VAR_EXPECTED = "expected score: VAR ≥ DPO"
VAR_BEATS_DPO = "VAR's gold reward ≥ DPO's"
VAR_PAPER_GAIN = f"VAR's gold reward ≥ {VAR_PAPER_GAIN_PCT:+.2f}% over DPO's"


def reward_by_family(ev: SweepEvidence, config, families: dict[str, str] | None) -> dict:
    """Reported mean gold (and proxy, where scored) reward of one configuration (over the seeds it
    holds: a pick's reporting seeds) or of the SFT baseline (config None), over the reporting half and
    per prompt family.

    families maps prompt_id → family ("helpful", "harmful", …); prompts it does not name count only
    towards "all". Returns {family: {"n", "gold": {"mean", "ci_low", "ci_high"}, "proxy": … or None}},
    "all" first, then the families present in sorted order; each CI from the report's two-level
    bootstrap. The gold/proxy gap per family is where reward over-optimisation shows (SPEC §4).
    """
    groups = {"all": None, **{f: ev.family_mask(families, f) for f in family_names(ev, families)}}

    def entry(column, mask):
        if config is None:
            if ev.sft.samples.get(column) is None:
                return None
            q = ev.baseline_mean(column, mask)
        else:
            if not config.has(column):
                return None
            q = ev.mean(config, column, mask)
        e = estimate(q)
        return {"mean": e.value, "ci_low": e.ci[0], "ci_high": e.ci[1]}

    return {family: {"n": len(ev.reporting) if mask is None else int(mask.sum()),
                     "gold": entry("gold_score", mask), "proxy": entry("proxy_score", mask)}
            for family, mask in groups.items()}


def family_names(ev: SweepEvidence, families: dict | None) -> list[str]:
    named = {str(p): f for p, f in (families or {}).items()}
    return sorted({named[p] for p in ev.reporting if p in named})


def var_gain_claims(ev: SweepEvidence, families: dict | None = None) -> list[dict]:
    """The VAR paper's "average reward +7.16% over DPO", as two decided claims on the reported mean
    gold V of VAR's best configuration and D of DPO's best (both picked on the selection half and their
    ranking seeds, each reported on its reporting seeds: alignlab.analysis.replicates; with 2–3 seeds a
    pick reports on one seed, so these stay inconclusive until more seeds are trained), over all
    reporting prompts, paired on them:

        VAR's gold reward ≥ DPO's              V − D > 0
        VAR's gold reward ≥ +7.16% over DPO's  V − 1.0716·D > 0, the linear form of V/D > 1.0716
                                               (alignlab.evidence.ratio); its Fieller interval for the
                                               gain 100·(V/D − 1) rides along under "fieller"

    A percentage of D means something only where D is known to be above 0 (the world's gold has an
    arbitrary zero, so D near 0 says nothing about VAR and its percentage explodes): the second claim
    is "not tested", with the reason, unless D is significantly above 0 and its Fieller interval is
    bounded. Both are point-null claims: confirmed above 0, reversed below (for the second, the gain
    is significantly below the paper's 7.16%). The per-family gains are descriptive only
    (`var_vs_dpo_descriptives`): `families` is accepted so that every caller passes the same
    arguments to both, and the decided claims do not split on it.
    """
    difference = "reported mean gold of VAR's best configuration − DPO's best (V − D), paired on the prompts"
    contrast = (f"V − {VAR_PAPER_RATIO:.4f}·D of the best configurations' reported mean gold (the linear form of "
                f"V/D ≥ {VAR_PAPER_RATIO:.4f}), only where D is significantly above 0")
    runs, seeds = behind(ev, ("var", "dpo"))
    missing = absent_methods(ev, ("var", "dpo"))
    if missing:
        return [untested(VAR_BEATS_DPO, difference, missing, runs), untested(VAR_PAPER_GAIN, contrast, missing, runs)]
    best_var, best_dpo = (ev.picked(best_run(ev.by_method[m])) for m in ("var", "dpo"))
    v, d = ev.mean(best_var), ev.mean(best_dpo)
    detail = f"best configurations {reported_on(best_var)} vs {reported_on(best_dpo)}"
    claims = [tested(VAR_BEATS_DPO, difference, ev.difference(v, d), detail, runs, seeds)]
    dpo = estimate(d)
    interval = ratio_interval(v, d, VAR_PAPER_RATIO)
    if not (dpo.ci[0] > 0 and interval.bounded):
        why = (f"{detail}; DPO's mean gold {dpo.value:.3g} (95% CI [{dpo.ci[0]:.3g}, {dpo.ci[1]:.3g}]) is not "
               f"significantly above 0, so a percentage of it is not bounded by the data (Fieller's interval "
               f"for V/D is {interval.kind}); the gold reward's zero is arbitrary")
        return claims + [untested(VAR_PAPER_GAIN, contrast, why, runs)]
    claim = tested(VAR_PAPER_GAIN, contrast, combine(lambda x, y: x - VAR_PAPER_RATIO * y, v, d), detail, runs,
                   seeds)
    return claims + [{**claim, "fieller": gain_pct(interval)}]


def gain_pct(interval: FiellerInterval) -> dict:
    """A ratio's Fieller interval as a gain in %: 100·(ratio − 1); the interval None unless bounded."""
    return {"gain_pct": 100 * (interval.ratio - 1), "kind": interval.kind,
            "ci": [100 * (interval.low - 1), 100 * (interval.high - 1)] if interval.bounded else None}


def var_vs_dpo_descriptives(ev: SweepEvidence, families: dict | None) -> dict | None:
    """Descriptions of VAR's best configuration against DPO's, each on its reporting seeds as in
    `var_gain_claims` (None without both methods): no verdicts, no correction. The percentages depend on where the gold reward's zero lies; the
    head-to-head record and the share of DPO's gain do not (nor on its scale):

        gain_by_family      100·(V/D − 1) over all reporting prompts and per prompt family, each with its
                            Fieller 95% interval where bounded (the paper's per-family percentages)
        head_to_head        VAR's strict win, tie and loss shares against DPO on per-prompt gold, over
                            seed pairs (alignlab.analysis.replicates win_matrix), with 95% CIs of the wins
        share_of_dpo_gain   (V − D)/(D − SFT): VAR's gain over DPO as a share of DPO's gain over SFT,
                            with its Fieller interval; None without the SFT baseline
    """
    if not ev.by_method.get("var") or not ev.by_method.get("dpo"):
        return None
    best_var, best_dpo = (ev.picked(best_run(ev.by_method[m])) for m in ("var", "dpo"))
    groups = {"all": None, **{f: ev.family_mask(families, f) for f in family_names(ev, families)}}
    gains = {}
    for family, mask in groups.items():
        gains[family] = gain_pct(ratio_interval(ev.mean(best_var, mask=mask), ev.mean(best_dpo, mask=mask),
                                                VAR_PAPER_RATIO))
    matrix = ev.win_matrix({"VAR": best_var, "DPO": best_dpo})
    head_to_head = {"win": matrix["rate"][0][1], "tie": matrix["tie"][0][1], "loss": matrix["rate"][1][0],
                    "win_ci": [matrix["ci_low"][0][1], matrix["ci_high"][0][1]],
                    "loss_ci": [matrix["ci_low"][1][0], matrix["ci_high"][1][0]], "prompts": matrix["prompts"]}
    share = None
    if ev.sft is not None:
        v, d, sft = ev.mean(best_var), ev.mean(best_dpo), ev.baseline_mean()
        interval = ratio_interval(ev.difference(v, d), ev.difference(d, sft), 0.0)
        share = {"value": interval.ratio, "kind": interval.kind, "ci": [interval.low, interval.high]
                 if interval.bounded else None}
    return {"configurations": {"var": best_var.name, "dpo": best_dpo.name}, "gain_by_family": gains,
            "head_to_head": head_to_head, "share_of_dpo_gain": share}


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
    improve is dropped (there is no race to run). Verdict: "not tested" when GRPO does not improve
    on the start; "confirmed" when the speedup CI is above 5; "reversed" when it is below 1 (VAR
    slower, or never there); else "inconclusive". `reward` names the reward in the explanation (the
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
        return {**result, "verdict": "not tested", "reason": reason}

    resampled = race(resample_counts(n, n_resamples, seed) / n)
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
        outcome, reason = "inconclusive", f"{evidence} does not lie above {VAR_PAPER_SPEEDUP:g}×"
    return {**result, "verdict": outcome, "reason": reason}


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
        log_sum = logsumexp(batch)
        log_z = log_sum - np.log(b)
        weights = np.exp(batch - log_sum[:, None])           # softmax: each row sums to 1
        rows.append({"batch_size": int(b), "log_z_mean": float(log_z.mean()), "log_z_sd": float(log_z.std()),
                     "weight_sd": float(np.std(b * weights)),
                     "ess_fraction": float(np.mean(1 / (weights ** 2).sum(axis=1) / b)),
                     "max_weight": float(np.mean(weights.max(axis=1)))})
    return rows
