"""The report's evidence sections: the claims (Holm within the primary and, apart, the secondary family),
expected best-of-k curves at equal search budget, and in-distribution vs OOD. Each is a Section of blocks and
its part of summary.json; the statistics come from alignlab.analysis and alignlab.evidence.
"""

from __future__ import annotations

from alignlab.analysis import best_run, expected_max_curve, wilson_interval
from alignlab.analysis.claims import correction_text, to_settle_text
from alignlab.analysis.replicates import SEED_RULE
from alignlab.analysis.sequential import INTERIM_LEVEL, primary_level
from alignlab.analysis.runs import method_label, seed_list
from alignlab.evidence import CORRECTION, estimate
from alignlab.report.blocks import BASELINE, BASELINE_KEY, Cell, Plot, Section, Sweep, Table
from alignlab.report.figures import forest_figure, legend_beside, new_figure, png_bytes


def _number(value, fmt: str = "{:+.4g}") -> str:
    return "–" if value is None else fmt.format(value)


def _p_text(p) -> str:
    return "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def selection_text(sweep: Sweep) -> str:
    split = sweep.evidence.split
    if split is None:
        return "No run has per-sample results, so nothing can be picked or judged."
    return (f"Configurations are picked (best, top-25%, top-k%, best-of-k) on a selection half of the test "
            f"prompts ({len(split.selection)} prompts) and on their ranking seeds (the 1st, 3rd, … of each "
            f"configuration), and every number and verdict is computed on the other, reporting half "
            f"({len(split.reporting)} prompts); a picked configuration's numbers only on its other seeds (the 2nd, "
            f"4th, …), so neither a lucky prompt nor a lucky seed that won the pick counts in its score. A "
            f"method with one configuration picks nothing and reports every seed; a pick reported on one seed "
            f"(2 or 3 seeds per configuration) leaves its claims inconclusive. The split is fixed by the prompt "
            f"ids alone, the seeds by their order.")


def claims_section(sweep: Sweep) -> tuple[Section, dict]:
    ev = sweep.evidence
    floors = {m: ev.noise_floor(m) for m in ev.by_method}
    method_of = {config.name: m for m, configs in ev.by_method.items() for config in configs}
    primary = [c["claim"] for c in sweep.claims if c["family"] == "primary"]
    primary_text = "; ".join(primary) or "none"
    rows = []
    for c in sweep.claims:
        seeds = "–" if not c["seeds"] else seed_list(c["seeds"], shown=4)
        used = {method_of[name] for name in c["configurations"]}
        compared = [m for m in ev.by_method if m in used]
        floor_text = "; ".join(f"{method_label(m)} {_number(floors[m], '{:.3g}')}" for m in compared) or "–"
        rows.append([Cell(c["claim"], css="text"), _number(c["value"]),
                     "–" if c["ci"] is None else f"[{c['ci'][0]:+.4g}, {c['ci'][1]:+.4g}]",
                     _p_text(c["p_value"]), Cell(_p_text(c["p_adjusted"]), f"({c['family']})"),
                     Cell(c["verdict"], css="verdict " + c["verdict"].replace(" ", "-")),
                     Cell(f"{c['runs']} runs", f"seeds {seeds}; {c['prompts'] or '–'} prompts"),
                     Cell("; ".join(filter(None, [f"{c['statistic']}. {c['detail']}", to_settle_text(c)]))
                          + f". Noise floor: {floor_text}", css="note")])
    floor_rows = [[method_label(m), str(len(ev.by_method[m])),
                   "/".join(sorted({str(len(c.runs)) for c in ev.by_method[m]})),
                   _number(f, "{:.4f}") if f is not None else "– (one seed)"] for m, f in floors.items()]
    intro = (
        f"{selection_text(sweep)} Each configuration is trained with several seeds; its score is the mean over "
        "its seeds. CIs and p-values come from one two-level bootstrap (seeds within each configuration, then "
        "prompts, shared by every model so comparisons stay paired; configurations that share seed values, "
        "as one data order, have them drawn jointly and count as one source of training noise), read with "
        "Student's t at the Welch–Satterthwaite degrees of freedom: three seeds leave few. Each statistic is "
        "oriented so that a value above the null region (0 for every claim here) supports the claim. A few claims were "
        f"declared primary before the data ({primary_text}); the rest are secondary. The p-values are adjusted "
        f"with Holm's step-down method within each family ({correction_text(sweep.claims)}). "
        "Verdicts: *confirmed* (adjusted p < 5%, value above the null region), *reversed* (adjusted p < 5%, "
        "below it), *inconclusive* (otherwise, or fewer than 2 seeds per configuration: training noise "
        "unmeasured), *not tested* (runs or columns missing). An inconclusive claim says what would settle it: "
        "about how many seeds per configuration (or reporting prompts) give 80% power at the observed effect "
        "(from the estimate's seed and prompt variance, Student's t at the df those seeds would give).") + sequential_text(sweep.looks)
    plotted = [c for c in sweep.claims if c["value"] is not None and c["ci"] is not None]
    unplotted = [c["claim"] for c in sweep.claims if c not in plotted]
    forest = []
    if plotted:
        forest = [Plot("claims.png", forest_figure(plotted), "forest plot of the claims",
                       "Each tested claim's estimate and 95% CI (its statistic's own units, so each row has its "
                       "own axis), the null region shaded grey (a line where it is the point 0); colour by "
                       "verdict: green confirmed, red reversed, grey inconclusive; primary claims in the top block."
                       + (f" Not plotted (no estimate): {'; '.join(unplotted)}." if unplotted else ""))]
    section = Section("claims", "Claims, with the evidence behind them", [
        *forest,
        Table(["claim", "value", "95% CI", "p", "p (Holm, within family)", "verdict", "behind it",
               "statistic, detail, what would settle it, noise floor (seed sd of mean gold)"], rows),
        intro,
        ("The noise floor: how much one model's mean gold score moves between training seeds of the same "
         "configuration (reporting half, pooled over each method's configurations). A difference smaller than "
         "it is not one a single run could show."),
        Table(["method", "configurations", "seeds each", "noise floor (seed sd of mean gold)"], floor_rows)])
    selection = None if ev.split is None else {**ev.split.describe(), "picked_on": "selection",
                                                "reported_on": "reporting", "seeds": SEED_RULE}
    summary = {"claims": sweep.claims, "primary": primary, "correction": CORRECTION, "noise_floor": floors,
               "selection": selection, "sequential": {
                   "interim_level": INTERIM_LEVEL, "final_level": primary_level(sweep.looks, interim=False),
                   "looks": [{k: v for k, v in look.items() if k != "decided"}
                             | {"decided": [c["claim"] for c in look["decided"]]} for look in sweep.looks]}}
    return section, summary


def sequential_text(looks: list[dict]) -> str:
    """What the report says of the sequential design's looks (none: nothing)."""
    if not looks:
        return ""
    steps = "; ".join(f"look {look['look']} at {look['runs']} runs: "
                      f"{', '.join(c['claim'] for c in look['decided']) or 'none'} decided, "
                      f"one more seed for {len(look['added'])} configuration(s)" for look in looks)
    return (f" Seeds where the noise is: after the first seeds the study looked at its primary claims and gave one "
            f"more seed to the configurations whose training noise kept one open ({steps}). Each interim look "
            f"decided at {INTERIM_LEVEL:.1%} (Holm over the primary family) and the final analysis at "
            f"{primary_level(looks, interim=False):.1%}, what the looks left of 5% (Haybittle–Peto α-spending); a "
            "claim decided at a look keeps that look's numbers. The secondary claims are tested once, at the end, "
            "on seeds added for the primary claims' sake.")


def expected_section(sweep: Sweep) -> tuple[Section, dict]:
    ev = sweep.evidence
    section = Section("expected", "2. Expected performance at equal search budget")
    if not ev.by_method:
        section.blocks.append("No finished runs with per-sample results.")
        return section, {"expected_max": {}, "grid": {}}
    curves = {m: expected_max_curve(ev, configs) for m, configs in ev.by_method.items()}
    sft_mean = ev.reported_value_of_baseline() if ev.sft is not None else None
    rows, grid = [], {}
    for method, configs in ev.by_method.items():
        values = [ev.reported_value(c) for c in configs]
        worse = None
        if sft_mean is not None:
            count = sum(v < sft_mean for v in values)
            low, high = wilson_interval(count, len(values))
            worse = {"count": int(count), "n": len(values), "fraction": count / len(values), "ci_low": low,
                     "ci_high": high}
        grid[method] = {"configurations": len(configs), "reported_means": values, "worse_than_sft": worse}
        first, last = curves[method][0], curves[method][-1]
        rows.append([method_label(method), str(len(configs)),
                     Cell(f"{first['mean']:.3f}", f"[{first['ci'][0]:.3f}, {first['ci'][1]:.3f}]"),
                     Cell(f"{last['mean']:.3f}", f"[{last['ci'][0]:.3f}, {last['ci'][1]:.3f}]"),
                     f"{min(values):.3f} – {max(values):.3f}",
                     "–" if worse is None else Cell(f"{worse['count']}/{worse['n']}",
                                                    f"[{worse['ci_low']:.0%}, {worse['ci_high']:.0%}]")])
    caption = ("Expected best-of-k: the reported mean gold score (reporting half; for k ≥ 2 on each "
               "configuration's reporting seeds) of the configuration a search of k configurations drawn at random "
               "from the grid would pick on the selection half and ranking seeds, computed exactly over all "
               "k-subsets (Dodge et al. 2019); bands are 95% CIs of the two-level bootstrap."
               + (f" The dashed line is the SFT model ({sft_mean:.3f})." if sft_mean is not None else ""))
    section.blocks += [
        ("Which method does better for a fixed hyper-parameter search budget? k = 1 is a configuration "
         "drawn at random (the grid's mean: what a method gives without a search); the last point of each "
         "curve is its best configuration. Methods are compared at equal k."),
        Plot("expected_max.png", expected_max_figure(curves, sweep.colors, sft_mean), "expected best-of-k curves",
             caption),
        Table(["method", "configurations", "best-of-1 (grid mean) [95% CI]", "best-of-all [95% CI]",
               "range of configurations", "configurations worse than SFT [Wilson 95%]"], rows)]
    return section, {"expected_max": curves, "grid": grid}


def expected_max_figure(curves: dict, colors: dict, sft_mean: float | None) -> bytes:
    fig = new_figure(7.2, 3.8)
    ax = fig.subplots()
    for method, curve in curves.items():
        k = [p["k"] for p in curve]
        ax.plot(k, [p["mean"] for p in curve], marker="o", color=colors[method], label=method_label(method))
        ax.fill_between(k, [p["ci"][0] for p in curve], [p["ci"][1] for p in curve], color=colors[method],
                        alpha=0.15, lw=0)
    if sft_mean is not None:
        ax.axhline(sft_mean, color="#333333", lw=1, ls="--", label=BASELINE)
    ax.set_xlabel("search budget k (configurations tried)")
    ax.set_ylabel("expected mean gold score")
    ax.xaxis.get_major_locator().set_params(integer=True)
    legend_beside(ax)
    return png_bytes(fig)


def indist_section(sweep: Sweep) -> tuple[Section, dict]:
    """Each method's best configuration on held-out training-style prompts and on the test prompts."""
    section = Section("ood", "In distribution vs out of distribution")
    ev = sweep.evidence
    models = ([(BASELINE_KEY, BASELINE, None)] if ev.sft is not None else []) + [
        (m, method_label(m), ev.picked(best_run(configs))) for m, configs in ev.by_method.items()]
    rows, summary = [], {}
    for key, name, config in models:
        gap = ev.in_distribution_gap(config)
        if gap is None:
            continue
        e = estimate(gap)
        ood = ev.reported_value_of_baseline() if config is None else ev.reported_value(config)
        runs = [ev.sft] if config is None else config.runs
        summary[key] = {"in_distribution": ood + e.value, "ood": ood, "gap": e.value, "gap_ci": list(e.ci),
                        "gap_p_value": e.p_value, "prompts": len(runs[0].indist["gold_score"])}
        rows.append([name, f"{ood + e.value:.3f}", f"{ood:.3f}",
                     Cell(f"{e.value:+.3f}", f"[{e.ci[0]:+.3f}, {e.ci[1]:+.3f}]"), str(summary[key]["prompts"])])
    if not rows:
        section.blocks.append("No in-distribution evaluation in this sweep (real data without held-out "
                              "training-style prompts, or a sweep from an earlier version).")
        return section, summary
    section.blocks += [
        ("Training and test prompts differ in style (the study's OOD setting). Each model's mean gold score on "
         "held-out prompts in the training style, next to the test prompts' reporting half, and the gap: "
         "how much of the gain survives the shift. Means over the configuration's reporting seeds; the gap's 95% CI "
         "resamples both prompt sets on their own and the seeds alike in both (descriptive: not a claim, "
         "so outside the Holm correction)."),
        Table(["model", "in-distribution mean gold", "OOD mean gold", "gap (in − out) [95% CI]",
               "in-distribution prompts"], rows)]
    return section, summary
