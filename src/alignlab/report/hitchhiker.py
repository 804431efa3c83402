"""The robustness sections of the report (SPEC §6 items 1, 3–6: best, head-to-head, top-k, kl-score,
sensitivity) and the table of all runs, as alignlab.report.document lists them: each a Section of
blocks and its part of summary.json. Claims and expected performance are alignlab.report.evidence;
the statistics come from alignlab.analysis.
"""

from __future__ import annotations

import re
from functools import partial

import numpy as np

from alignlab.analysis import (RunRecord, best_run, metric_value, percentile_run, sensitivity, top_k_pooled,
                               varying_params)
from alignlab.analysis.replicates import has_column
from alignlab.analysis.runs import method_label
from alignlab.analysis.var import family_names
from alignlab.report.blocks import (BASELINE, BASELINE_KEY, FORMATS, METRICS, REPORTED, TITLES, TOP_K, Cell, Plot,
                                    Section, Sweep, Table, behind, format_or_dash, param_text, params_text, pct_change)
from alignlab.report.evidence import selection_text
from alignlab.report.figures import grouped_boxes_figure, heatmap_figure, scatter_figure, sensitivity_figure

TOP_K_METRICS = ("length", "kl", "ln_kl")
SENSITIVITY_METRICS = ("mean_score", "length", "ln_kl")


def run_summary(run: RunRecord) -> dict:
    return {"run": run.name, "method": run.method, "params": run.params,
            "metrics": {key: run.metrics.get(key) for key, *_ in METRICS}}


def _reported_cell(ev, config, column: str, fmt: str, mask=None) -> tuple[Cell, dict | None]:
    """A configuration's (or the baseline's, config None) reported mean with its 95% CI."""
    runs = [ev.sft] if config is None else config.runs
    if not all(has_column(r, column) for r in runs):
        return Cell("–"), None
    e = ev.reported_estimate(config, column, mask)
    return Cell(fmt.format(e.value), f"[{fmt.format(e.ci[0])}, {fmt.format(e.ci[1])}]"), {
        "value": e.value, "ci": list(e.ci)}


def best_section(sweep: Sweep) -> tuple[Section, dict]:
    ev = sweep.evidence
    section = Section("best", "1. Best configuration per method")
    best = {m: ev.picked(best_run(configs)) for m, configs in ev.by_method.items()}
    models = ([(BASELINE, None)] if ev.sft is not None else []) + [(method_label(m), c) for m, c in best.items()]
    if not models:
        section.blocks.append("No finished runs.")
        return section, {"sft": None, "best": {}}
    families = family_names(ev, sweep.families)
    # (column, where summary.json holds it, title, format, prompts): per-family means under one key
    columns = [(c, (k, None), t, f, None) for c, k, t, f in REPORTED] + [
        ("gold_score", ("mean_score_by_family", f), f"mean gold: {f}", "{:.3f}", ev.family_mask(sweep.families, f))
        for f in families]
    dpo_value = ev.reported_value(best["dpo"]) if "dpo" in best else None
    rows, summary = [], {"sft": None, "best": {}}
    for name, config in models:
        cells, entry = [name, Cell("–" if config is None else config.name, css="name")], {}
        for column, (key, family), _, fmt, mask in columns:
            cell, value = _reported_cell(ev, config, column, fmt, mask)
            if family is None:
                entry[key] = value
            else:
                entry.setdefault(key, {})[family] = value
            cells.append(cell)
        value = ev.reported_value_of_baseline() if config is None else ev.reported_value(config)
        change = None if dpo_value is None or config is best.get("dpo") else pct_change(value, dpo_value)
        if dpo_value is not None:
            cells.append(format_or_dash(change, "{:+.1f}%"))
        cells.append(Cell("–" if config is None else params_text(config.params), css="note"))
        rows.append(cells)
        record = {"configuration": None if config is None else config.name,
                  "params": {} if config is None else config.params,
                  "seeds": [] if config is None else config.seeds, "selection_score": None if config is None
                  else config.score, "reported": entry, "mean_score_change_vs_dpo_pct": change}
        if config is None:
            summary["sft"] = record
        else:
            summary["best"][config.method] = record
    section.blocks += [
        f"{selection_text(sweep)} The best configuration of each method's grid (highest mean gold score over its "
        "ranking seeds on the selection half), every metric on the reporting half as the mean over its reporting "
        "seeds with a two-level bootstrap 95% CI (shares on the logit scale, KL and length on the log scale, so "
        "that each interval stays in its range); win rates count strict wins, ties shown apart"
        + (f"; the % change of mean gold relative to DPO's best configuration ({best['dpo'].name})."
           if "dpo" in best else "; the sweep has no DPO run."),
        Table(["model", "configuration", *(t for _, _, t, _, _ in columns),
               *(["Δ mean gold vs best DPO"] if dpo_value is not None else []), "hyper-parameters"], rows)]
    return section, summary


def _win_block(sweep: Sweep, which: str, pick, chosen: str) -> tuple[list, dict | None]:
    """Blocks and summary of one win matrix between the SFT baseline and each method's picked configuration."""
    ev = sweep.evidence
    models = {BASELINE: None} if ev.sft is not None else {}
    models.update({method_label(m): ev.picked(pick(configs)) for m, configs in ev.by_method.items()})
    keys = ([BASELINE_KEY] if ev.sft is not None else []) + list(ev.by_method)  # summary.json's names
    if len(models) < 2:
        return [f"The {chosen} matrix needs at least two models; this sweep has {len(models)}."], None
    matrix = ev.win_matrix(models)
    names = matrix["names"]
    picked = "; ".join(f"{name} = {c.name}" for name, c in models.items() if c is not None)
    caption = (f"Head-to-head strict win rate of the row model over the column model on per-prompt gold scores "
               f"(ties apart: win(i, j) + tie + win(j, i) = 100%), pooled over seed pairs, with two-level "
               f"bootstrap 95% CIs over {matrix['prompts']} reporting prompts. Models: each method's {chosen}"
               + (", and the SFT baseline" if ev.sft is not None else "") + f" ({picked}).")

    def cell(i, j):
        if i == j:
            return Cell("–")
        return Cell(f"{matrix['rate'][i][j]:.1%}", f"[{matrix['ci_low'][i][j]:.1%}, {matrix['ci_high'][i][j]:.1%}]; "
                                                   f"tie {matrix['tie'][i][j]:.0%}")
    rows = [[name, *[cell(i, j) for j in range(len(names))]] for i, name in enumerate(names)]
    blocks = [Plot(f"win_matrix_{which}.png", heatmap_figure(matrix, f"{chosen} of each method"),
                   f"win matrix of the {chosen}s", caption),
              Table([f"{chosen}: row beats column", *names], rows)]
    return blocks, {**matrix, "names": keys,
                    "models": {key: (None if c is None else c.name) for key, c in zip(keys, models.values())}}


def head_to_head_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("head-to-head", "3. Head-to-head win rates")
    section.blocks.append(
        "Each cell is the share of reporting prompts (and seed pairs) on which the row model's response has the "
        "strictly higher gold score, as the Hitchhiker paper counts wins; the tie share is beside it. The "
        "top-25% configuration of a method is the one at the 75th percentile of its grid on the selection "
        "half: what a grid search gets without luck. Each picked configuration plays with its reporting seeds "
        "(the ones that did not pick it).")
    summary = {}
    top25 = partial(percentile_run, q=75)
    # With few configurations (2 per method: the 75th percentile of 2 is the better one) every top-25%
    # pick is the best pick, and its matrix would repeat the one above: summary.json keeps its numbers.
    repeats = all(top25(configs) is best_run(configs) for configs in sweep.evidence.by_method.values())
    for which, pick, chosen in (("best", best_run, "best configuration"), ("top25", top25, "top-25% configuration")):
        blocks, summary[which] = _win_block(sweep, which, pick, chosen)
        if which == "top25" and repeats and summary["best"] is not None:
            sizes = "/".join(sorted({str(len(c)) for c in sweep.evidence.by_method.values()}))
            blocks = [f"Each method's top-25% configuration is its best one here ({sizes} configurations per "
                      "method), so the top-25% matrix would repeat the one above and is not drawn."]
        section.blocks += blocks
    return section, summary


def top_k_section(sweep: Sweep) -> tuple[Section, dict]:
    ev = sweep.evidence
    section = Section("top-k", "4. Top-k% configurations: length, KL and length-normalised KL")
    section.blocks.append(
        f"For each method, its top-k% configurations by mean gold score on the selection half and their "
        f"ranking seeds (k = "
        f"{', '.join(map(str, TOP_K))}; the top k% of n are the best ⌈k·n/100⌉, at least one) and the "
        f"per-sample distribution of response length, summed KL to SFT and length-normalised KL, pooled over "
        f"those configurations' reporting seeds and the reporting prompts (tails visible). Table cells: median, with "
        f"the number of samples.")
    summary = {}
    for metric in TOP_K_METRICS:
        title = TITLES[metric]
        dist = {m: d for m, d in ((m, top_k_pooled(ev, configs, TOP_K, metric)) for m, configs in ev.by_method.items())
                if any(d.values())}
        if not dist:
            section.blocks.append(f"No run has a {title} measurement.")
            continue
        summary[metric] = {m: {k: {"median": float(np.median(v)) if v else None, "n_samples": len(v)}
                               for k, v in d.items()} for m, d in dist.items()}
        rows = [[method_label(m), *[Cell(format_or_dash(np.median(v) if v else None, FORMATS[metric]),
                                         f"({len(v)} samples)") for v in (d[k] for k in TOP_K)]]
                for m, d in dist.items()]
        caption = (f"{title[0].upper() + title[1:]} of the responses of each method's top-k% configurations "
                   f"(picked on the selection half), pooled over reporting seeds and prompts: boxes span the "
                   f"quartiles around the median, whiskers 1.5 IQR, dots are samples.")
        section.blocks += [Plot(f"top_k_{metric}.png", grouped_boxes_figure(dist, sweep.colors, title),
                                f"{title} of the top-k% configurations", caption),
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
    caption = (f"Mean length-normalised KL to SFT against mean gold score, one point per run (each run's "
               f"metrics.json: all test prompts, both halves), coloured by method; {sft_text}. {behind(points)}"
               + (f"; {left_out} run(s) without a KL measurement left out." if left_out else "."))
    section.blocks.append(Plot("kl_vs_score.png", scatter_figure(sweep, points),
                               "length-normalised KL vs mean score per run", caption))
    return section


def sensitivity_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("sensitivity", "6. Sensitivity to hyper-parameters")
    section.blocks.append("Each metric (each run's metrics.json: all test prompts, both halves) against each "
                          "hyper-parameter that varies within a method's grid: the line is the mean over the runs "
                          "sharing a value, the band their min–max, dots single runs.")
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
        + (" and the SFT baseline" if sweep.sft is not None else "")
        + ", by method, best first; each metric from the run's metrics.json, over all test prompts (both halves).",
        Table(["run", "method", *params, *TITLES.values()], rows)])
    return section, [run_summary(r) for r in everything]
