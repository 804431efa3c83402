"""The robustness report of a sweep: `summary.json`, `report.md`, `report.html` and `figures/*.png`.

Sections, in this order (SPEC §6 items 1–6; alignlab.report.hitchhiker):
    claims        a forest plot of the tested claims, then every claim of the report (Hitchhiker's; VAR vs
                  DPO when VAR ran), each with its value, CI, p-value, Holm-adjusted p-value, verdict and
                  the seeds/runs/prompts behind it; how the claims are made; the noise floor per method
                  (alignlab.report.evidence)
    1 best        best configuration per method (picked on the selection half and its ranking seeds),
                  every metric on the reporting half and its reporting seeds with its 95% CI, per
                  prompt family, % change vs DPO's best
    2 expected    expected best-of-k curves per method at equal search budget, configurations worse than SFT
    3 head-to-head strict-win gold matrices (tie shares apart) of each method's best and top-25% configuration
    4 top-k       per-sample length, summed KL and length-normalised KL pooled over each method's top-k%
    ood           in-distribution (training-style held-out prompts) vs OOD mean gold, and the gap
    5 kl-score    mean length-normalised KL vs mean score, one point per run
    6 sensitivity each metric against each varying hyper-parameter, per method
    curves        each method's best configuration's loss, reward margin and (VAR) weight entropy against
                  the optimizer step, from its runs' metrics.jsonl (alignlab.report.curves)
    examples      a few reporting prompts with the SFT baseline's and each method's best configuration's
                  response and gold score (alignlab.report.examples)
    7–10 (VAR)    with `--study var`: VAR vs DPO vs SFT, convergence race, Z estimators, compute
                  (alignlab.report.var)
    runs          every run with its hyper-parameters and metric values

The statistics come from alignlab.analysis. The content is built once, as sections of blocks
(paragraphs, tables, figures: alignlab.report.blocks), and rendered twice — Markdown and
self-contained HTML (alignlab.report.render) — so the two cannot drift apart. The output is a pure
function of the runs: methods and runs are put in a canonical order, jitter is seeded and the PNGs
carry no version metadata (alignlab.report.figures), so the same runs give byte-identical files.

summary.json is for programs: metric keys are each run's metrics.json names (mean_score, win_vs_chosen,
kl, ln_kl, length, ...), models are keyed by method ("sft" for the SFT baseline), context keys are
snake_case; display labels appear only in report.md and report.html. It is strict JSON (what
`json.dumps(allow_nan=False)` writes): a NaN or ±Infinity anywhere
(a metric of a run whose gold scores hold NaN, a statistic computed from one) is written as null,
and the top-level `"nulls"` maps the JSON Pointer (RFC 6901) of each such null to its reason, e.g.
`{"/runs/2/metrics/mean_score/value": "not finite (nan)"}`; it is `{}` when every number is finite.

A damaged sweep directory (`alignlab report DIR`, alignlab.study.results.write_sweep_report):
    runs.sqlite not SQLite, truncated, or without the `runs` table and its columns
                            error: nothing in the store can be trusted
    runs.sqlite with the journal of a sweep killed mid-change
                            error: only a writer can roll the change back; resume the sweep
    study.json, sweep.yaml, runs/sft/ (metrics.json, samples.parquet) missing or malformed
                            error: every section depends on them (the context, the SFT baseline)
    a run's metrics.jsonl missing or malformed, or samples.parquet without prompt and response columns
                            the run has no training curve or example texts (a warning for damage);
                            the report's results do not depend on them
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

import json
import math
import re
from pathlib import Path

import matplotlib

from alignlab import atomic
from alignlab.output_dirs import WrittenFiles
from alignlab.analysis import RunRecord
from alignlab.report.blocks import Plot, Sweep
from alignlab.report.curves import curves_section
from alignlab.report.examples import examples_section
from alignlab.report.figures import PLOT_STYLE
from alignlab.analysis import claims_of
from alignlab.report.evidence import claims_section, expected_section, indist_section
from alignlab.report.hitchhiker import (best_section, head_to_head_section, runs_section, scatter_section,
                                        sensitivity_section, top_k_section)
from alignlab.report.render import render_html, render_markdown
from alignlab.report.var import var_sections
from alignlab.safe_delete import check_no_link
from alignlab.untrusted import shown


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


def snake_case(label: str) -> str:
    """A context label ("training seeds") as summary.json's key ("training_seeds")."""
    return re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")


def write_report(out_dir: str | Path, runs: list[RunRecord], sft: RunRecord | None, context: dict,
                 title: str, var: dict | None = None, families: dict | None = None, *, primary=None,
                 reference: str | None = None, papers: bool = True, looks: list[dict] = ()) -> dict:
    """Write summary.json, report.md, report.html and figures/*.png for a sweep; return the summary.

    runs: every finished run of the sweep; sft: the SFT baseline's evaluation (or None); context:
    ordered facts printed at the top (and copied into the summary); var: for a VAR study, the
    inputs of its section (alignlab.report.var.var_sections: race, z, compute); families: test prompt
    id -> family, for the per-family numbers and the VAR claims; primary, reference, papers: which
    claims are made and which are primary (alignlab.analysis.claims_of); looks: a sequential study's
    interim looks (alignlab.analysis.sequential), which spend part of the primary family's 5%. Each file
    is written atomically.
    """
    out_dir = Path(out_dir)
    check_no_link(out_dir / "figures", out_dir, what="the report's figures/ folder")
    sweep = Sweep.of(runs, sft, families)
    sweep.claims = claims_of(sweep.evidence, families, primary, reference, papers, looks=looks)
    sweep.looks = list(looks)
    with matplotlib.rc_context(PLOT_STYLE):
        claims, claims_summary = claims_section(sweep)
        best, best_summary = best_section(sweep)
        expected, expected_summary = expected_section(sweep)
        matrices, matrices_summary = head_to_head_section(sweep)
        top_k, top_k_summary = top_k_section(sweep)
        shift, shift_summary = indist_section(sweep)
        scatter = scatter_section(sweep)
        sensitive, sensitivity_summary = sensitivity_section(sweep)
        curves, curves_summary = curves_section(sweep)
        examples, examples_summary = examples_section(sweep)
        var_parts, var_summary = [], None
        if var is not None:
            var_parts, var_summary = var_sections(sweep, **var)
    everything, runs_summary = runs_section(sweep)
    sections = [claims, best, expected, matrices, top_k, shift, scatter, sensitive, curves, examples, *var_parts,
                everything]

    plots = [b for s in sections for b in s.blocks if isinstance(b, Plot)]
    numbers = {plot.file: i for i, plot in enumerate(plots, 1)}
    summary = {"title": title, "context": {snake_case(key): value for key, value in context.items()}, **claims_summary, **best_summary,
               "expected_max": expected_summary["expected_max"], "grid": expected_summary["grid"],
               "win_matrices": matrices_summary, "top_k": top_k_summary, "in_distribution_vs_ood": shift_summary,
               "sensitivity": sensitivity_summary, "training_curves": curves_summary, "examples": examples_summary,
               **({"var": var_summary} if var is not None else {}), "runs": runs_summary,
               "figures": [{"file": f"figures/{p.file}", "caption": p.caption} for p in plots]}

    figures = out_dir / "figures"
    for plot in plots:
        with atomic.atomic_open(figures / plot.file, "wb") as handle:
            handle.write(plot.png)
    # A figure an earlier report wrote but this one does not (a method gone, a column absent) would
    # sit beside the report unexplained; files a person put in figures/ are theirs and stay.
    WrittenFiles(figures).replace_with([p.file for p in plots], out_dir)
    summary = finite_summary(summary)
    atomic.write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic.write_text(out_dir / "report.md", render_markdown(title, context, sections, numbers))
    atomic.write_text(out_dir / "report.html", render_html(title, context, sections, numbers))
    return summary
