"""The robustness report of a sweep: `summary.json`, `report.md`, `report.html` and `figures/*.png`.

Sections, in this order (SPEC §6 items 1–6):
    claims        the Hitchhiker study's claims tested on this sweep, each with its statistic, CI, verdict
    1 best        best run per method on mean score, every metric with its 95% CI, % change vs DPO's best
    2 expected    mean score over the whole grid per method, and the fraction of runs worse than SFT
    3 head-to-head per-prompt gold win matrices of each method's best and top-25% models
    4 top-k       response length and length-normalised KL of each method's top-k% runs
    5 kl-score    mean length-normalised KL vs mean score, one point per run
    6 sensitivity each metric against each varying hyper-parameter, per method
    7–10 (VAR)    with `--study var`: VAR vs DPO vs SFT, convergence race, Z estimators, compute (report_var)
    runs          every run with its hyper-parameters and metric values

The statistics come from alignlab.analysis. The content is built once, as sections of blocks
(paragraphs, tables, figures), and rendered twice — Markdown and self-contained HTML — so the two
cannot drift apart. The output is a pure function of the runs: methods and runs are put in a
canonical order, jitter is seeded and the PNGs carry no version metadata, so the same runs give
byte-identical files.

Text copied from configs and data (run, method and parameter names and values, study.json) reaches
both renderings through the same escaping as the authored text: HTML-escaped in report.html, and in
report.md HTML-escaped too (`<`, `>`, `&`), with backslashes and table pipes backslash-escaped and
line breaks made spaces, so a run named `<img src=x onerror=alert(1)>` or `a|b` shows as written and
runs nothing. Figures draw such names as plain text (no `$...$` mathtext).

summary.json is strict JSON (what `json.dumps(allow_nan=False)` writes): a NaN or ±Infinity anywhere
(a metric of a run whose gold scores hold NaN, a statistic computed from one) is written as null,
and the top-level `"nulls"` maps the JSON Pointer (RFC 6901) of each such null to its reason, e.g.
`{"/runs/2/metrics/mean_score/value": "not finite (nan)"}`; it is `{}` when every number is finite.

A damaged sweep directory (`alignlab report DIR`, alignlab.study.sweep.write_sweep_report):
    runs.sqlite not SQLite, truncated, or without the `runs` table and its columns
                            error: nothing in the store can be trusted
    runs.sqlite with the journal of a sweep killed mid-change
                            error: only a writer can roll the change back; resume the sweep
    study.json, sweep.yaml, runs/sft/ (metrics.json, samples.parquet) missing or malformed
                            error: every section depends on them (the context, the SFT baseline)
    one run's row malformed (not UTF-8, params/metrics not JSON objects or not what check_params and
    check_metrics need, unknown status, run_dir outside the sweep directory: refused, never read),
    or its samples.parquet missing, unreadable, lacking a column or of other prompts than runs/sft/
                            skipped, named with the reason in the report's "runs" line: the other
                            runs' results stand on their own, and the line says what is left out;
                            an error when no run is left to report
The store is opened read-only (alignlab.study.store): the report never writes runs.sqlite. A finished
run's metrics.json only marks its evaluation complete (the store holds the same metrics), so its
content is not read.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from alignlab import atomic
from alignlab.analysis import (LABELS, RunRecord, best_run, best_runs, expected_performance, fraction_worse,
                               hitchhiker_claims, metric_value, percentile_run, sensitivity,
                               top_k_distributions, varying_params, win_matrix)
from alignlab.untrusted import shown

METRICS = [  # key, title, format
    ("mean_score", "mean gold score", "{:.3f}"),
    ("win_vs_chosen", "win vs chosen", "{:.1%}"),
    ("win_vs_sft", "win vs SFT", "{:.1%}"),
    ("kl", "KL to SFT", "{:.2f}"),
    ("ln_kl", "length-norm. KL", "{:.3f}"),
    ("length", "length (tokens)", "{:.1f}"),
]
TITLES = {key: title for key, title, _ in METRICS}
FORMATS = {key: fmt for key, _, fmt in METRICS}
TOP_K = (5, 10, 25, 50, 100)
TOP_K_METRICS = ("length", "ln_kl")
SENSITIVITY_METRICS = ("mean_score", "length", "ln_kl")
BASELINE = "SFT (baseline)"  # the SFT model every method starts from; "SFT" is the sft-objective grid

# One colour per method in every figure; methods outside LABELS take the spare colours in turn.
METHOD_COLORS = {"sft": "#7f7f7f", "dpo": "#1f77b4", "ln-dpo": "#ff7f0e", "simpo": "#2ca02c", "var": "#9467bd"}
SPARE_COLORS = ["#8c564b", "#e377c2", "#bcbd22", "#17becf"]
BASELINE_COLOR = "#333333"
DPI = 110
PLOT_STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
              "grid.color": "#e6e9ec", "grid.linewidth": 0.6, "axes.axisbelow": True,
              "axes.edgecolor": "#8a949e", "legend.frameon": False,
              "text.parse_math": False}  # names from the data are text: a method named "$\\x$" is no formula


def label(method: str) -> str:
    return LABELS.get(method, method)


def pct_change(value: float, baseline: float) -> float | None:
    if baseline == 0:
        return None
    return 100.0 * (value - baseline) / abs(baseline)


# ------------------------------------------------------------------ what the report needs of a run

def check_params(params: dict) -> dict:
    """Hyper-parameters are grouped, sorted and printed: each value text, a number or true/false.
    ValueError says which is not."""
    for key, value in params.items():
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"params: {shown(key)} is {shown(value)}, not text, a number or true/false")
    return params


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metrics: {where} is {shown(value)}, not a number")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"metrics: {where} is {shown(value)}, too large for a number") from None


def check_metrics(metrics) -> dict:
    """Metrics as metrics.summarize writes them: {name: null or {"value", "ci_low", "ci_high": a number
    or null, ...}}, mean_score measured. Returns them with those numbers as floats (a NaN stays, and
    becomes null in summary.json); ValueError says what does not fit."""
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics: {shown(metrics)} is not a JSON object")
    checked = {}
    for key, entry in metrics.items():
        if entry is None:
            checked[key] = None
        elif isinstance(entry, dict):
            checked[key] = {**entry, **{part: _number(entry.get(part), f"{shown(key)}.{part}")
                                        for part in ("value", "ci_low", "ci_high")}}
        else:
            raise ValueError(f"metrics: {shown(key)} is {shown(entry)}, not an object or null")
    score = checked.get("mean_score")
    if score is None or None in (score["value"], score["ci_low"], score["ci_high"]):
        raise ValueError("metrics: mean_score is not measured (a value and its CI)")
    return checked


# ------------------------------------------------------------------ the document model

@dataclass(frozen=True)
class Cell:
    text: str
    sub: str = ""  # secondary text (a CI, a count): after the value in Markdown, on a quieter line in HTML
    css: str = ""  # HTML class: "text" (prose, left-aligned), "note" (small prose), "verdict confirmed", ...


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell | str]]


@dataclass
class Plot:
    file: str  # name under figures/
    png: bytes
    alt: str
    caption: str


@dataclass
class Section:
    anchor: str
    title: str
    blocks: list = field(default_factory=list)  # paragraphs (str), Table, Plot


# ------------------------------------------------------------------ the sweep, in canonical order

def _method_rank(method: str) -> tuple:
    order = list(LABELS)
    return (order.index(method) if method in order else len(order), method)


@dataclass
class Sweep:
    runs: list[RunRecord]  # methods in LABELS order, best run first within a method
    by_method: dict[str, list[RunRecord]]
    sft: RunRecord | None
    colors: dict[str, str]

    @classmethod
    def of(cls, runs: list[RunRecord], sft: RunRecord | None) -> "Sweep":
        # Best first as analysis ranks runs, (score, name) descending, then grouped by method (stable
        # sort): the report does not depend on the order the sweep finished its runs in.
        ordered = sorted(sorted(runs, key=lambda r: (r.score, r.name), reverse=True),
                         key=lambda r: _method_rank(r.method))
        by_method: dict[str, list[RunRecord]] = {}
        for run in ordered:
            by_method.setdefault(run.method, []).append(run)
        spare = [m for m in by_method if m not in METHOD_COLORS]
        colors = {m: METHOD_COLORS.get(m) or SPARE_COLORS[spare.index(m) % len(SPARE_COLORS)] for m in by_method}
        return cls(ordered, by_method, sft, colors)


def behind(runs: list[RunRecord]) -> str:
    """How many runs (per method) and which seeds stand behind a result, for captions."""
    counts = Counter(r.method for r in runs)
    seeds = sorted({r.params["seed"] for r in runs if "seed" in r.params}, key=lambda s: (isinstance(s, str), s))
    seed_text = "seeds " + ", ".join(map(str, seeds)) if seeds else "seeds not recorded"
    plural = "" if len(runs) == 1 else "s"
    if len(counts) == 1:
        return f"{len(runs)} {label(runs[0].method)} run{plural} ({seed_text})"
    per_method = ", ".join(f"{label(m)} {n}" for m, n in counts.items())
    return f"{len(runs)} run{plural} ({per_method}; {seed_text})"


# ------------------------------------------------------------------ formatting

def _fmt(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def metric_cell(run: RunRecord, key: str) -> Cell:
    """A metric's value with its 95% CI as the secondary text; "–" where it was not measured."""
    entry = run.metrics.get(key)
    if entry is None or entry.get("value") is None:
        return Cell("–")
    fmt = FORMATS[key]
    return Cell(fmt.format(entry["value"]), f"[{_fmt(entry.get('ci_low'), fmt)}, {_fmt(entry.get('ci_high'), fmt)}]")


def param_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={param_text(v)}" for k, v in params.items()) or "–"


def context_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


def _span(low: float, high: float, fmt: str) -> str:
    return f"{fmt.format(low)} – {fmt.format(high)}"


# ------------------------------------------------------------------ figures

def _figure(width: float, height: float) -> Figure:
    # A bare Figure (no pyplot): no global backend or figure registry is touched.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" entry (the matplotlib version): for a given matplotlib and FreeType, the bytes
    # depend on the figure alone, so rewriting an unchanged report changes no file.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _boxes(ax, groups: list[list[float]], positions, colors, width: float, rng) -> None:
    """A box (quartiles, median, whiskers at 1.5 IQR) per group, with its values as jittered dots."""
    for values, x, color in zip(groups, positions, colors):
        if not values:
            continue
        ax.boxplot([values], positions=[x], widths=width, patch_artist=True, showfliers=False,
                   boxprops={"facecolor": to_rgba(color, 0.25), "edgecolor": color},
                   whiskerprops={"color": color}, capprops={"color": color}, medianprops={"color": "black"})
        jitter = rng.uniform(-width / 3, width / 3, len(values))
        ax.scatter(x + jitter, values, s=14, color=color, edgecolor="white", linewidth=0.5, zorder=3)


def _sft_line(ax, sft: RunRecord | None) -> None:
    if sft is not None:
        ax.axhline(sft.score, color=BASELINE_COLOR, lw=1, ls="--", label=f"{BASELINE}: {sft.score:.3f}")


def _legend(ax, handles=None) -> None:
    """The legend beside the plot, where it cannot hide data (constrained layout makes room)."""
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _method_legend(ax, methods, colors) -> None:
    _legend(ax, [Patch(facecolor=to_rgba(colors[m], 0.5), edgecolor=colors[m], label=label(m)) for m in methods])


def expected_figure(sweep: Sweep) -> bytes:
    methods = list(sweep.by_method)
    fig = _figure(1.8 + 1.1 * len(methods), 3.6)
    ax = fig.subplots()
    _boxes(ax, [[r.score for r in sweep.by_method[m]] for m in methods], range(len(methods)),
           [sweep.colors[m] for m in methods], 0.55, np.random.default_rng(0))
    ax.set_xticks(range(len(methods)), [label(m) for m in methods])
    ax.set_ylabel(TITLES["mean_score"])
    _sft_line(ax, sweep.sft)
    if sweep.sft is not None:
        ax.legend(fontsize=8, loc="best")
    return _png(fig)


def grouped_boxes_figure(dist: dict[str, dict[int, list[float]]], colors: dict, ylabel: str) -> bytes:
    """Per k a group of boxes, one per method: the metric over each method's top-k% runs."""
    methods = list(dist)
    slot = 0.8 / len(methods)
    fig = _figure(8.0, 3.6)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, method in enumerate(methods):
        offset = (i - (len(methods) - 1) / 2) * slot
        _boxes(ax, [dist[method][k] for k in TOP_K], [g + offset for g in range(len(TOP_K))],
               [colors[method]] * len(TOP_K), 0.85 * slot, rng)
    ax.set_xticks(range(len(TOP_K)), [f"top {k}%" for k in TOP_K])
    ax.set_xlim(-0.5, len(TOP_K) - 0.5)
    ax.set_ylabel(ylabel)
    _method_legend(ax, methods, colors)
    return _png(fig)


def heatmap_figure(matrix: dict, title: str) -> bytes:
    """Annotated win-rate matrix: cell (i, j) is the win rate of row model i over column model j."""
    names, rate = matrix["names"], np.array(matrix["rate"])
    n = len(names)
    fig = _figure(2.6 + 1.05 * n, 1.6 + 0.75 * n)
    ax = fig.subplots()
    image = ax.imshow(rate, cmap="RdBu", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            text = "–" if i == j else (f"{rate[i, j]:.0%}\n[{matrix['ci_low'][i][j]:.0%}, "
                                       f"{matrix['ci_high'][i][j]:.0%}]")
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5,
                    color="white" if abs(rate[i, j] - 0.5) > 0.3 else "black")
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("column model")
    ax.set_ylabel("row model")
    ax.set_title(title)
    ax.grid(False)
    ax.spines[:].set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.8, label="win rate of row over column")
    return _png(fig)


def scatter_figure(sweep: Sweep, points: list[RunRecord]) -> bytes:
    fig = _figure(7.2, 4.0)
    ax = fig.subplots()
    for method in sweep.by_method:
        mine = [r for r in points if r.method == method]
        if mine:
            ax.scatter([metric_value(r, "ln_kl") for r in mine], [r.score for r in mine], s=22,
                       color=sweep.colors[method], edgecolor="white", linewidth=0.5, label=label(method))
    sft_kl = metric_value(sweep.sft, "ln_kl") if sweep.sft is not None else None
    if sft_kl is not None:
        ax.scatter([sft_kl], [sweep.sft.score], marker="*", s=140, color=BASELINE_COLOR, label=BASELINE)
    else:
        _sft_line(ax, sweep.sft)
    ax.set_xlabel(f"mean {TITLES['ln_kl']} to SFT")
    ax.set_ylabel(TITLES["mean_score"])
    _legend(ax)
    return _png(fig)


def sensitivity_figure(runs: list[RunRecord], params: list[str], metrics: list[str], color: str,
                       title: str) -> bytes:
    """Small multiples: a row per hyper-parameter, a column per metric; mean line, min–max band, runs."""
    fig = _figure(0.4 + 3.0 * len(metrics), 0.6 + 2.4 * len(params))
    fig.suptitle(title)
    axes = fig.subplots(len(params), len(metrics), squeeze=False)
    for row, param in enumerate(params):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            stats = sensitivity(runs, param, metric)
            # Values sit at evenly spaced positions: grids are often log-spaced, and values may be text.
            position = {repr(s["value"]): x for x, s in enumerate(stats)}
            xs = range(len(stats))
            ax.fill_between(xs, [s["min"] for s in stats], [s["max"] for s in stats], color=color, alpha=0.15, lw=0)
            ax.plot(xs, [s["mean"] for s in stats], color=color, marker="o", ms=3.5, lw=1.4)
            dots = [(position[repr(r.params[param])], metric_value(r, metric)) for r in runs
                    if param in r.params and metric_value(r, metric) is not None]
            ax.scatter([x for x, _ in dots], [y for _, y in dots], s=9, color=color, alpha=0.6, lw=0, zorder=3)
            ax.set_xticks(xs, [param_text(s["value"]) for s in stats], fontsize=7.5)
            ax.set_xlim(-0.4, len(stats) - 0.6)
            ax.set_xlabel(param)
            ax.set_ylabel(TITLES[metric])
    return _png(fig)


# ------------------------------------------------------------------ sections

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
    models = ([(BASELINE, sweep.sft)] if sweep.sft is not None else []) + [(label(m), r) for m, r in best.items()]
    rows, summary = [], {"sft": None, "best": {}}
    for name, run in models:
        row = run_summary(run)
        cells = [name, Cell(run.name, css="name"), *[metric_cell(run, key) for key, *_ in METRICS]]
        if dpo is not None and run is dpo:
            cells.append("–")
        elif dpo is not None:
            row["mean_score_change_vs_dpo_pct"] = pct_change(run.score, dpo.score)
            cells.append(_fmt(row["mean_score_change_vs_dpo_pct"], "{:+.1f}%"))
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
        cells = [label(method), str(perf["n_runs"]), Cell(f"{perf['mean']:.3f}", f"[{perf['ci_low']:.3f}, "
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
    models.update({label(m): pick(runs) for m, runs in sweep.by_method.items()})
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
        rows = [[label(m), *[Cell(_fmt(np.median(v) if v else None, FORMATS[metric]), f"({len(v)} runs)")
                             for v in (d[k] for k in TOP_K)]] for m, d in dist.items()]
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
            section.blocks.append(f"{label(method)}: no hyper-parameter varies across its {behind(runs)}.")
            continue
        metrics = [m for m in SENSITIVITY_METRICS if any(metric_value(r, m) is not None for r in runs)]
        summary[method] = {p: {m: sensitivity(runs, p, m) for m in metrics} for p in params}
        caption = (f"{label(method)}: {', '.join(TITLES[m] for m in metrics)} (columns) against "
                   f"{', '.join(params)} (rows). {behind(runs)}.")
        file = "sensitivity_" + re.sub(r"[^A-Za-z0-9_-]", "_", method) + ".png"
        section.blocks.append(Plot(file, sensitivity_figure(runs, params, metrics, sweep.colors[method], label(method)),
                                   f"{label(method)} sensitivity to its hyper-parameters", caption))
    return section, summary


def runs_section(sweep: Sweep) -> tuple[Section, list[dict]]:
    everything = ([sweep.sft] if sweep.sft is not None else []) + sweep.runs
    params = list(dict.fromkeys(p for r in everything for p in r.params))
    rows = [[r.name, Cell(BASELINE if r is sweep.sft else label(r.method), css="name"),
             *[param_text(r.params[p]) if p in r.params else "–" for p in params],
             *[_fmt(metric_value(r, key), fmt) for key, _, fmt in METRICS]] for r in everything]
    section = Section("runs", "All runs", [
        f"Every finished run ({behind(sweep.runs) if sweep.runs else 'none'})"
        + (" and the SFT baseline" if sweep.sft is not None else "") + ", by method, best first.",
        Table(["run", "method", *params, *TITLES.values()], rows)])
    return section, [run_summary(r) for r in everything]


# ------------------------------------------------------------------ rendering

def _md_escape(text: str) -> str:
    """Text as report.md shows it: HTML-escaped, backslashes and table pipes escaped, on one line."""
    escaped = html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return escaped.replace("\r", " ").replace("\n", " ")


def _md_cell(cell: Cell | str) -> str:
    cell = Cell(cell) if isinstance(cell, str) else cell
    return _md_escape(f"{cell.text} {cell.sub}" if cell.sub else cell.text)


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(map(_md_escape, table.header)) + " |", "|" + "---|" * len(table.header)]
    return "\n".join(lines + ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows])


def _html_cell(cell: Cell | str) -> str:
    cell = Cell(cell) if isinstance(cell, str) else cell
    css = f" class='{cell.css}'" if cell.css else ""
    sub = f"<br><span class=ci>{html.escape(cell.sub)}</span>" if cell.sub else ""
    return f"<td{css}>{html.escape(cell.text)}{sub}</td>"


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.header)
    body = "".join("<tr>" + "".join(map(_html_cell, row)) + "</tr>" for row in table.rows)
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _html_text(text: str) -> str:
    """Paragraph text: escaped, with the Markdown *emphasis* the paragraphs use rendered as <em>."""
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", html.escape(text))


def render_markdown(title: str, context: dict, sections: list[Section], numbers: dict[str, int]) -> str:
    out = [f"# {_md_escape(title)}",
           "\n".join(f"- **{_md_escape(str(k))}**: {_md_escape(context_text(v))}" for k, v in context.items()),
           "Contents: " + " · ".join(f"[{_md_escape(s.title)}](#{s.anchor})" for s in sections)]
    for section in sections:
        out.append(f'<a id="{section.anchor}"></a>\n\n## {_md_escape(section.title)}')
        for block in section.blocks:
            if isinstance(block, Table):
                out.append(markdown_table(block))
            elif isinstance(block, Plot):
                out.append(f"![{_md_escape(block.alt)}](figures/{block.file})\n\n"
                           f"*Figure {numbers[block.file]}. {_md_escape(block.caption)}*")
            else:
                out.append(_md_escape(block))
    return "\n\n".join(p for p in out if p) + "\n"


HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2rem auto;
padding:0 1rem;color:#1d232a;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2.4rem;border-bottom:1px solid #e3e6ea;padding-bottom:.3rem}
p{max-width:820px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:1rem 0;font-size:.88rem}
th,td{border:1px solid #d5d9de;padding:.35rem .6rem;text-align:right;vertical-align:top}
th{background:#f3f5f7;text-align:left;vertical-align:bottom}
td:first-child,th:first-child{text-align:left;font-weight:600;white-space:nowrap}
td.text{text-align:left;white-space:normal;min-width:11rem}
td.note{text-align:left;font-size:.78rem;color:#55606b;min-width:12rem;max-width:26rem}
td.name{text-align:left;white-space:nowrap}
td.verdict{text-align:center;font-weight:600;white-space:nowrap}
td.confirmed{background:#dcf2e1;color:#19692c}td.reversed{background:#fbe1df;color:#a3241b}
td.not-confirmed{background:#eceef1;color:#4f5963}td.not-tested{background:#fafbfc;color:#a4acb4;font-weight:400}
.ci{font-size:.78rem;color:#6b7580;white-space:nowrap}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#55606b;max-width:760px}
.context{font-size:.85rem;color:#55606b}
nav.toc{font-size:.9rem;background:#f6f8fa;border:1px solid #e3e6ea;padding:.5rem 1rem;display:inline-block}
nav.toc ul{margin:.3rem 0;padding-left:1.2rem;list-style:none}
"""


def render_html(title: str, context: dict, sections: list[Section], numbers: dict[str, int]) -> str:
    context_html = "".join(f"<li><strong>{html.escape(str(k))}</strong>: {html.escape(context_text(v))}</li>"
                           for k, v in context.items())
    toc = "".join(f"<li><a href='#{s.anchor}'>{html.escape(s.title)}</a></li>" for s in sections)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<ul class=context>{context_html}</ul><nav class=toc>Contents<ul>{toc}</ul></nav>"]
    for section in sections:
        parts.append(f"<h2 id='{section.anchor}'>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(html_table(block))
            elif isinstance(block, Plot):
                parts.append(f"<figure><img alt='{html.escape(block.alt)}' src='data:image/png;base64,"
                             f"{base64.b64encode(block.png).decode()}'><figcaption>Figure {numbers[block.file]}. "
                             f"{html.escape(block.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{_html_text(block)}</p>")
    return "".join(parts) + "</body></html>\n"


# ------------------------------------------------------------------ the report

def finite_summary(summary: dict) -> dict:
    """The summary with each NaN and ±Infinity made null, and "nulls" mapping the JSON Pointer of
    each to its reason (the module docstring)."""
    nulls = {}

    def clean(value, pointer: str):
        if isinstance(value, float) and not math.isfinite(value):
            nulls[pointer] = f"not finite ({value})"
            return None
        if isinstance(value, dict):
            return {key: clean(item, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}")
                    for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{pointer}/{i}") for i, item in enumerate(value)]
        return value

    return {**clean(summary, ""), "nulls": nulls}


def write_report(out_dir: str | Path, runs: list[RunRecord], sft: RunRecord | None, context: dict,
                 title: str, var: dict | None = None) -> dict:
    """Write summary.json, report.md, report.html and figures/*.png for a sweep; return the summary.

    runs: every finished run of the sweep; sft: the SFT baseline's evaluation (or None); context:
    ordered facts printed at the top (and copied into the summary); var: for a VAR study, the
    inputs of its section (report_var.var_sections: families, race, z, compute). Each file is
    written atomically.
    """
    out_dir = Path(out_dir)
    sweep = Sweep.of(runs, sft)
    with matplotlib.rc_context(PLOT_STYLE):
        claims, claims_summary = claims_section(sweep)
        best, best_summary = best_section(sweep)
        expected, expected_summary = expected_section(sweep)
        matrices, matrices_summary = head_to_head_section(sweep)
        top_k, top_k_summary = top_k_section(sweep)
        scatter = scatter_section(sweep)
        sensitive, sensitivity_summary = sensitivity_section(sweep)
        var_parts, var_summary = [], None
        if var is not None:
            from alignlab.report.var import var_sections

            var_parts, var_summary = var_sections(sweep, **var)
    everything, runs_summary = runs_section(sweep)
    sections = [claims, best, expected, matrices, top_k, scatter, sensitive, *var_parts, everything]

    plots = [b for s in sections for b in s.blocks if isinstance(b, Plot)]
    numbers = {plot.file: i for i, plot in enumerate(plots, 1)}
    summary = {"title": title, "context": context, "claims": claims_summary, **best_summary,
               "expected_performance": expected_summary, "win_matrices": matrices_summary,
               "top_k": top_k_summary, "sensitivity": sensitivity_summary,
               **({"var": var_summary} if var is not None else {}), "runs": runs_summary,
               "figures": [{"file": f"figures/{p.file}", "caption": p.caption} for p in plots]}

    figures = out_dir / "figures"
    for plot in plots:
        with atomic.atomic_open(figures / plot.file, "wb") as handle:
            handle.write(plot.png)
    # A figure an earlier report wrote but this one does not (a method gone, a column absent) would
    # sit beside the report unexplained: figures/ holds exactly the figures the report shows.
    for stale in set(figures.glob("*.png")) - {figures / p.file for p in plots}:
        stale.unlink()
    summary = finite_summary(summary)
    atomic.write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic.write_text(out_dir / "report.md", render_markdown(title, context, sections, numbers))
    atomic.write_text(out_dir / "report.html", render_html(title, context, sections, numbers))
    return summary
