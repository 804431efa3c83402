"""Hand-built RunRecords for the analysis tests (a helper module, not a test file: pytest imports it
from this folder, as the tests import conftest's helpers)."""

import numpy as np

from alignlab.analysis.runs import RunRecord


def run(name, score=0.0, method="dpo", params=None, metrics=None, **samples):
    """A RunRecord with a hand-set score; per-sample columns given as keyword lists."""
    all_metrics = {"mean_score": {"value": score, "ci_low": score, "ci_high": score}}
    for key, value in (metrics or {}).items():
        all_metrics[key] = None if value is None else {"value": value, "ci_low": value, "ci_high": value}
    return RunRecord(name, method, params or {}, all_metrics,
                     {k: np.asarray(v) for k, v in samples.items()})


def grid(scores, prefix="r"):
    """Runs r0, r1, ... with the given scores, in the given (unsorted) order."""
    return [run(f"{prefix}{i}", s) for i, s in enumerate(scores)]


def replicate(method, config, seed, prompt_id, gold_score, **columns):
    """One seed of configuration `config` of `method`: run "<method>-c<config>-s<seed>", params
    {"beta": config, "seed": seed}, its score the mean of gold_score over every prompt. Grouped, the
    configuration is named by its parameters: "<method>-beta<config>" beside another beta."""
    gold = np.asarray(gold_score, dtype=np.float64)
    return run(f"{method}-c{config}-s{seed}", float(gold.mean()), method, {"beta": config, "seed": seed},
               prompt_id=list(prompt_id), gold_score=gold, **columns)


def by_id(ids, values):
    """{prompt id: value} of two aligned lists."""
    return dict(zip(ids, values))
