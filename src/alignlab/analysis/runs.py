"""The runs of a sweep, and how the analyses select and compare them.

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

The selections apply to anything with a `name` and a `score`: runs, and the configurations of
alignlab.analysis.replicates (whose score is its ranking seeds' on the selection half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


LABELS = {"sft": "SFT", "dpo": "DPO", "ln-dpo": "LN-DPO", "simpo": "SimPO", "var": "VAR", "ipo": "IPO",
          "orpo": "ORPO", "kto": "KTO", "bco-pair": "BCO-pair", "sppo-hard": "SPPO-hard", "nca-pair": "NCA-pair",
          "apo-zero": "APO-zero", "apo-down": "APO-down", "exo-pair": "EXO-pair", "aot": "AOT",
          "aot-unpaired": "AOT-unpaired", "discopop": "DiscoPOP", "robust": "robust DPO", "hinge": "hinge"}


@dataclass
class RunRecord:
    name: str                                    # unique run name, e.g. "dpo-beta0.1-lr5e-4-ep1-s0"
    method: str                                  # "sft", "dpo", "ln-dpo", "simpo", "var"
    params: dict = field(default_factory=dict)   # hyper-parameters: learning_rate, epochs, seed, beta, ...
    metrics: dict = field(default_factory=dict)  # metric -> {"value", "ci_low", "ci_high"} or None
    samples: dict = field(default_factory=dict)  # per-sample columns aligned by position, incl. "prompt_id"
    indist: dict = field(default_factory=dict)   # per-sample columns of the in-distribution evaluation, same
                                                 # shape as samples; empty when not evaluated
    selection: dict = field(default_factory=dict)  # per-sample columns on the user's selection prompts, if any
    training_log: dict = field(default_factory=dict)  # metrics.jsonl's numeric columns ("step", "loss", ...)
                                                      # by logged step; empty when not read
    texts: dict = field(default_factory=dict)  # prompt id (text) -> {"prompt", "response"}: the report's
                                               # example prompts only

    @property
    def score(self) -> float:
        return self.metrics["mean_score"]["value"]


def method_label(method: str) -> str:
    """The method's name as the report prints it ("ln-dpo" → "LN-DPO"); unknown methods as given."""
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


# ------------------------------------------------------------------ shared by the analyses

# A configuration given by name (a scores table's plain `configuration`) reads as "<method>-<name>".
SHORT_NAMES = {"learning_rate": "lr", "epochs": "ep", "seed": "s", "configuration": ""}


def parameter_name(method: str, values: dict) -> str:
    """"<method>-<name><value>-…" of the values given, in their order (learning_rate written lr,
    epochs ep, seed s, a named configuration by its name alone; numbers as %g): how a sweep names its runs (alignlab.study.grid) and the
    report a configuration (alignlab.analysis.replicates)."""
    def text(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return "-".join([method, *(f"{SHORT_NAMES.get(name, name)}{text(value)}" for name, value in values.items())])


def seed_list(seeds, shown: int = 6) -> str:
    """Training seeds as a report lists them: every one up to `shown`, else the first few and how many
    (a study's configurations each train on seeds of their own, so a claim may rest on dozens)."""
    seeds = sorted(seeds, key=param_sort_key)
    if len(seeds) <= shown:
        return ", ".join(map(str, seeds))
    return f"{', '.join(map(str, seeds[:shown - 1]))}, … ({len(seeds)} in all)"


def param_sort_key(value):
    # Numbers sort numerically; anything else (strings, None) after them by its text.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if is_number else (1, 0, repr(value))
