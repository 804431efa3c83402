"""The report's building blocks: the sweep in canonical order, the document model (sections of
paragraphs, tables and figures) and the formatting of metrics, hyper-parameters and context.

The content is built once, as sections of blocks, and rendered twice (alignlab.report.render). The
output is a pure function of the runs: methods and runs are put in a canonical order here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from alignlab.analysis import LABELS, RunRecord, SweepEvidence
from alignlab.analysis.runs import method_label
from alignlab.evidence import N_RESAMPLES

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
TOP_K = (1, 5, 10, 25, 50, 100)
# What the report computes per configuration on the reporting half (per-sample columns; the win and tie
# shares are derived from the gold scores: alignlab.analysis.replicates.OUTCOMES), under the name each
# run's metrics.json gives it (summary.json's key) and its title (the rendered report's only).
REPORTED = [  # column, metrics.json name, title, format
    ("gold_score", "mean_score", "mean gold score", "{:.3f}"),
    ("win_vs_chosen", "win_vs_chosen", "win vs chosen", "{:.1%}"),
    ("tie_vs_chosen", "tie_vs_chosen", "tie vs chosen", "{:.1%}"),
    ("win_vs_sft", "win_vs_sft", "win vs SFT", "{:.1%}"),
    ("tie_vs_sft", "tie_vs_sft", "tie vs SFT", "{:.1%}"),
    ("kl", "kl", "KL to SFT", "{:.2f}"),
    ("ln_kl", "ln_kl", "length-norm. KL", "{:.3f}"),
    ("length", "length", "length (tokens)", "{:.1f}"),
]
BASELINE_KEY = "sft"  # the SFT baseline's key in summary.json, where models are keyed by method
BASELINE = "SFT (baseline)"  # the SFT model every method starts from; "SFT" is the sft-objective grid

# One colour per method in every figure; methods outside LABELS take the spare colours in turn.
METHOD_COLORS = {"sft": "#7f7f7f", "dpo": "#1f77b4", "ln-dpo": "#ff7f0e", "simpo": "#2ca02c", "var": "#9467bd"}
SPARE_COLORS = ["#8c564b", "#e377c2", "#bcbd22", "#17becf"]
BASELINE_COLOR = "#333333"


def pct_change(value: float, baseline: float) -> float | None:
    if baseline == 0:
        return None
    return 100.0 * (value - baseline) / abs(baseline)


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
    evidence: SweepEvidence  # configurations, the selection/reporting split, the shared resampling
    families: dict | None = None  # test prompt id -> family ("helpful", "harmful"), when known
    claims: list = field(default_factory=list)  # every claim of the report, decided together
    looks: list = field(default_factory=list)  # a sequential study's interim looks (alignlab.analysis.sequential)

    @classmethod
    def of(cls, runs: list[RunRecord], sft: RunRecord | None, families: dict | None = None,
           n_resamples: int = N_RESAMPLES, seed: int = 0) -> "Sweep":
        # Best first as analysis ranks runs, (score, name) descending, then grouped by method (stable
        # sort): the report does not depend on the order the sweep finished its runs in.
        ordered = sorted(sorted(runs, key=lambda r: (r.score, r.name), reverse=True),
                         key=lambda r: _method_rank(r.method))
        by_method: dict[str, list[RunRecord]] = {}
        for run in ordered:
            by_method.setdefault(run.method, []).append(run)
        spare = [m for m in by_method if m not in METHOD_COLORS]
        colors = {m: METHOD_COLORS.get(m) or SPARE_COLORS[spare.index(m) % len(SPARE_COLORS)] for m in by_method}
        return cls(ordered, by_method, sft, colors, SweepEvidence(ordered, sft, n_resamples, seed), families)


def behind(runs: list[RunRecord]) -> str:
    """How many runs (per method) and which seeds stand behind a result, for captions."""
    counts = Counter(r.method for r in runs)
    seeds = sorted({r.params["seed"] for r in runs if "seed" in r.params}, key=lambda s: (isinstance(s, str), s))
    seed_text = "seeds " + ", ".join(map(str, seeds)) if seeds else "seeds not recorded"
    plural = "" if len(runs) == 1 else "s"
    if len(counts) == 1:
        return f"{len(runs)} {method_label(runs[0].method)} run{plural} ({seed_text})"
    per_method = ", ".join(f"{method_label(m)} {n}" for m, n in counts.items())
    return f"{len(runs)} run{plural} ({per_method}; {seed_text})"


# ------------------------------------------------------------------ formatting

def format_or_dash(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def metric_cell(run: RunRecord, key: str) -> Cell:
    """A metric's value with its 95% CI as the secondary text; "–" where it was not measured."""
    entry = run.metrics.get(key)
    if entry is None or entry.get("value") is None:
        return Cell("–")
    fmt = FORMATS[key]
    return Cell(fmt.format(entry["value"]),
                f"[{format_or_dash(entry.get('ci_low'), fmt)}, {format_or_dash(entry.get('ci_high'), fmt)}]")


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
