"""The robustness sections of the report (SPEC §6 items 1–6: claims, best, expected, head-to-head,
top-k, kl-score, sensitivity) and the table of all runs, as alignlab.report.document lists them: each
a Section of blocks and its part of summary.json. The statistics come from alignlab.analysis.
"""

from __future__ import annotations

import re

import numpy as np

from alignlab.analysis import (RunRecord, best_run, best_runs, expected_performance, fraction_worse,
                               hitchhiker_claims, metric_value, percentile_run, sensitivity,
                               top_k_distributions, varying_params, win_matrix)
from alignlab.analysis.runs import method_label
from alignlab.report.blocks import (BASELINE, FORMATS, METRICS, TITLES, TOP_K, Cell, Plot, Section, Sweep, Table,
                                    behind, format_or_dash, metric_cell, param_text, params_text, pct_change)
from alignlab.report.figures import (expected_figure, grouped_boxes_figure, heatmap_figure, scatter_figure,
                                     sensitivity_figure)

TOP_K_METRICS = ("length", "ln_kl")
SENSITIVITY_METRICS = ("mean_score", "length", "ln_kl")


def _span(low: float, high: float, fmt: str) -> str:
    return f"{fmt.format(low)} – {fmt.format(high)}"


def claims_section(sweep: Sweep) -> tuple[Section, list[dict]]:
    claims = hitchhiker_claims(sweep.by_method, sweep.sft)
    rows = []
    for c in claims:
        tested = c["value"] is not None
        rows.append([Cell(c["claim"], css="text"), Cell(c["statistic"], css="note"),
                     f"{c['value']:+.4g}" if tested else "–",
                     f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]" if tested else "–",
                     Cell(c["verdict"], css="verdict " + c["verdict"].replace(" ", "-")),
                     str(c["n_runs"]), Cell(c["detail"], css="note")])
    intro = ("Each claim's statistic is oriented so that a positive value supports it. The verdict is "
             "*confirmed* when its 95% CI lies above 0, *reversed* when it lies below 0, *not confirmed* "
             "when it contains 0, and *not tested* when the sweep lacks the runs or columns it needs.")
    table = Table(["claim", "statistic", "value", "95% CI", "verdict", "runs", "detail"], rows)
    return Section("claims", "Claims of the Hitchhiker study", [intro, table]), claims


def run_summary(run: RunRecord) -> dict:
    return {"run": run.name, "method": run.method, "params": run.params,
            "metrics": {key: run.metrics.get(key) for key, *_ in METRICS}}


def best_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("best", "1. Best run per method")
    best = best_runs(sweep.runs)
    dpo = best.get("dpo")
    models = (([(BASELINE, sweep.sft)] if sweep.sft is not None else [])
              + [(method_label(m), r) for m, r in best.items()])
    rows, summary = [], {"sft": None, "best": {}}
    for name, run in models:
        row = run_summary(run)
        cells = [name, Cell(run.name, css="name"), *[metric_cell(run, key) for key, *_ in METRICS]]
        if dpo is not None and run is dpo:
            cells.append("–")
        elif dpo is not None:
            row["mean_score_change_vs_dpo_pct"] = pct_change(run.score, dpo.score)
            cells.append(format_or_dash(row["mean_score_change_vs_dpo_pct"], "{:+.1f}%"))
        cells.append(Cell(params_text(run.params), css="note"))
        rows.append(cells)
        if run is sweep.sft:
            summary["sft"] = row
        else:
            summary["best"][run.method] = row
    if not rows:
        section.blocks.append("No finished runs.")
        return section, summary
    change_header = ["Δ mean score vs best DPO"] if dpo is not None else []
    section.blocks += [
        "The run with the highest mean gold score of each method's grid, every metric with its bootstrap "
        "95% CI over test prompts" + (f", and the % change of its mean score relative to DPO's best run "
                                      f"({dpo.name})." if dpo is not None else "; the sweep has no DPO run."),
        Table(["model", "run", *TITLES.values(), *change_header, "hyper-parameters"], rows)]
    return section, summary


def expected_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("expected", "2. Expected performance over the grid")
    if not sweep.runs:
        section.blocks.append("No finished runs.")
        return section, {}
    summary, rows = {}, []
    for method, runs in sweep.by_method.items():
        perf = expected_performance(runs)
        worse = fraction_worse(runs, sweep.sft.score) if sweep.sft is not None else None
        summary[method] = {**perf, "worse_than_sft": worse}
        cells = [method_label(method), str(perf["n_runs"]), Cell(f"{perf['mean']:.3f}", f"[{perf['ci_low']:.3f}, "
                 f"{perf['ci_high']:.3f}]"), f"{perf['median']:.3f}", _span(perf["q25"], perf["q75"], "{:.3f}"),
                 _span(perf["min"], perf["max"], "{:.3f}")]
        if worse is not None:
            cells.append(Cell(f"{worse['count']}/{worse['n']} = {worse['fraction']:.0%}",
                              f"[{worse['ci_low']:.0%}, {worse['ci_high']:.0%}]"))
        rows.append(cells)
    worse_header = ["runs worse than SFT [Wilson 95% CI]"] if sweep.sft is not None else []
    sft_text = (f"The dashed line is the SFT model ({sweep.sft.name}, {sweep.sft.score:.3f})."
                if sweep.sft is not None else "No SFT baseline was evaluated.")
    caption = (f"Mean gold score of every run of the grid, per method: boxes span the quartiles around the "
               f"median, whiskers reach 1.5 IQR, dots are single runs (jittered sideways). {sft_text} "
               f"{behind(sweep.runs)}.")
    section.blocks += [
        "What a method gives over its whole grid — without a lucky grid search: the mean of its runs' "
        "mean gold scores with a bootstrap 95% CI over runs, the spread of the grid"
        + (f", and the share of runs whose mean score is below SFT's ({sweep.sft.score:.3f})."
           if sweep.sft is not None else "."),
        Table(["method", "runs", "mean score [95% CI]", "median", "quartiles", "range", *worse_header], rows),
        Plot("expected_performance.png", expected_figure(sweep), "mean score per method over the grid", caption)]
    return section, summary


def _win_block(sweep: Sweep, which: str, pick, chosen: str) -> tuple[list, dict | None]:
    """Blocks and summary of one win matrix between the SFT baseline and each method's picked run."""
    models = {BASELINE: sweep.sft} if sweep.sft is not None else {}
    models.update({method_label(m): pick(runs) for m, runs in sweep.by_method.items()})
    if len(models) < 2:
        return [f"The {chosen} matrix needs at least two models; this sweep has {len(models)}."], None
    lacking = [r.name for r in models.values() if not {"prompt_id", "gold_score"} <= set(r.samples)]
    if lacking:
        return [f"The {chosen} matrix needs per-sample gold scores, absent in {', '.join(lacking)}."], None
    matrix = win_matrix(models)
    n = len(matrix["names"])
    shared = [matrix["prompts"][i][j] for i in range(n) for j in range(n) if i != j]
    prompts = str(min(shared)) if min(shared) == max(shared) else f"{min(shared)}–{max(shared)}"
    picked = "; ".join(f"{name} = {run.name}" for name, run in models.items())
    caption = (f"Head-to-head win rate of the row model over the column model on per-prompt gold scores "
               f"(ties count half), with bootstrap 95% CIs over {prompts} shared test prompts. Models: each "
               f"method's {chosen}" + (", and the SFT baseline" if sweep.sft is not None else "")
               + f" ({picked}); chosen among {behind(sweep.runs)}.")
    rows = [[name, *[Cell("–") if i == j else Cell(f"{matrix['rate'][i][j]:.1%}", f"[{matrix['ci_low'][i][j]:.1%}, "
                                                  f"{matrix['ci_high'][i][j]:.1%}]") for j in range(n)]]
            for i, name in enumerate(matrix["names"])]
    blocks = [Plot(f"win_matrix_{which}.png", heatmap_figure(matrix, f"{chosen} of each method"),
                   f"win matrix of the {chosen}s", caption),
              Table([f"{chosen}: row beats column", *matrix["names"]], rows)]
    return blocks, {"models": {name: run.name for name, run in models.items()}, **matrix}


def head_to_head_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("head-to-head", "3. Head-to-head win rates")
    section.blocks.append(
        "Each cell is the fraction of shared test prompts on which the row model's response has the higher "
        "gold score (ties count half), so cell (i, j) + cell (j, i) = 100%. The top-25% model of a method is "
        "the run at the 75th percentile of its grid: what a grid search gets without luck.")
    summary = {}
    for which, pick, chosen in (("best", best_run, "best run"),
                                ("top25", lambda runs: percentile_run(runs, 75), "top-25% run")):
        blocks, summary[which] = _win_block(sweep, which, pick, chosen)
        section.blocks += blocks
    return section, summary


def top_k_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("top-k", "4. Top-k% runs: length and length-normalised KL")
    section.blocks.append(
        f"For each method, its top-k% runs by mean score (k = {', '.join(map(str, TOP_K))}; the top k% of n runs "
        f"are the best ⌈k·n/100⌉, at least one) and the distribution of their mean response length and "
        f"length-normalised KL to SFT. Table cells: median over those runs, with their count.")
    summary = {}
    for metric in TOP_K_METRICS:
        title = TITLES[metric]
        dist = {m: d for m, d in top_k_distributions(sweep.by_method, TOP_K, metric).items()
                if any(d.values())}
        if not dist:
            section.blocks.append(f"No run has a {title} measurement.")
            continue
        measured = [r for r in sweep.runs if metric_value(r, metric) is not None]
        summary[metric] = {m: {k: {"median": float(np.median(v)) if v else None, "n_runs": len(v), "values": v}
                               for k, v in d.items()} for m, d in dist.items()}
        rows = [[method_label(m), *[Cell(format_or_dash(np.median(v) if v else None, FORMATS[metric]),
                                         f"({len(v)} runs)") for v in (d[k] for k in TOP_K)]]
                for m, d in dist.items()]
        caption = (f"{title[0].upper() + title[1:]} of each method's top-k% runs by mean gold score: boxes "
                   f"span the quartiles around the median, dots are single runs. Drawn from {behind(measured)}.")
        section.blocks += [Plot(f"top_k_{metric}.png", grouped_boxes_figure(dist, sweep.colors, title),
                                f"{title} of the top-k% runs", caption),
                           Table([f"median {title}", *[f"top {k}%" for k in TOP_K]], rows)]
    return section, summary


def scatter_section(sweep: Sweep) -> Section:
    section = Section("kl-score", "5. Length-normalised KL vs mean score")
    points = [r for r in sweep.runs if metric_value(r, "ln_kl") is not None]
    if not points:
        section.blocks.append("No run has a length-normalised KL measurement.")
        return section
    left_out = len(sweep.runs) - len(points)
    sft_text = ("the star is the SFT model" if sweep.sft is not None and metric_value(sweep.sft, "ln_kl") is not None
                else "the dashed line is the SFT model's score" if sweep.sft is not None else "no SFT baseline")
    caption = (f"Mean length-normalised KL to SFT against mean gold score, one point per run, coloured by "
               f"method; {sft_text}. {behind(points)}"
               + (f"; {left_out} run(s) without a KL measurement left out." if left_out else "."))
    section.blocks.append(Plot("kl_vs_score.png", scatter_figure(sweep, points),
                               "length-normalised KL vs mean score per run", caption))
    return section


def sensitivity_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("sensitivity", "6. Sensitivity to hyper-parameters")
    section.blocks.append("Each metric against each hyper-parameter that varies within a method's grid: the line "
                          "is the mean over the runs sharing a value, the band their min–max, dots single runs.")
    summary = {}
    for method, runs in sweep.by_method.items():
        params = varying_params(runs)
        if not params:
            section.blocks.append(f"{method_label(method)}: no hyper-parameter varies across its {behind(runs)}.")
            continue
        metrics = [m for m in SENSITIVITY_METRICS if any(metric_value(r, m) is not None for r in runs)]
        summary[method] = {p: {m: sensitivity(runs, p, m) for m in metrics} for p in params}
        caption = (f"{method_label(method)}: {', '.join(TITLES[m] for m in metrics)} (columns) against "
                   f"{', '.join(params)} (rows). {behind(runs)}.")
        file = "sensitivity_" + re.sub(r"[^A-Za-z0-9_-]", "_", method) + ".png"
        figure = sensitivity_figure(runs, params, metrics, sweep.colors[method], method_label(method))
        section.blocks.append(Plot(file, figure,
                                   f"{method_label(method)} sensitivity to its hyper-parameters", caption))
    return section, summary


def runs_section(sweep: Sweep) -> tuple[Section, list[dict]]:
    everything = ([sweep.sft] if sweep.sft is not None else []) + sweep.runs
    params = list(dict.fromkeys(p for r in everything for p in r.params))
    rows = [[r.name, Cell(BASELINE if r is sweep.sft else method_label(r.method), css="name"),
             *[param_text(r.params[p]) if p in r.params else "–" for p in params],
             *[format_or_dash(metric_value(r, key), fmt) for key, _, fmt in METRICS]] for r in everything]
    section = Section("runs", "All runs", [
        f"Every finished run ({behind(sweep.runs) if sweep.runs else 'none'})"
        + (" and the SFT baseline" if sweep.sft is not None else "") + ", by method, best first.",
        Table(["run", "method", *params, *TITLES.values()], rows)])
    return section, [run_summary(r) for r in everything]
