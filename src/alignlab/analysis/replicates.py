"""A sweep as configurations with replicate seeds, its prompts split into selection and reporting
halves, and the resampling every claim of one report shares (`SweepEvidence`).

Definitions
    configuration    one grid point (method and hyper-parameters): the runs whose recorded parameters
                     are equal but for the training seed. Its name says what sets it apart: the
                     method and the parameters in which the method's configurations differ, with
                     the learning rate always (a sweep's run names, less their seed).
    score            a configuration's mean gold reward over its seeds on the SELECTION half (or on
                     the user's own selection prompts, when every run was evaluated on them): the
                     score that ranks configurations, so every pick (best, top-25%, top-k%) is made
                     on prompts that never judge it (alignlab.evidence.split).
    reported mean    the same mean on the REPORTING half, with the two-level bootstrap
                     (alignlab.evidence.bootstrap): what every number and verdict is computed from.
    win share        head to head, the share of (seed of a, seed of b, reporting prompt) comparisons a wins
                     (`win_share`, `win_matrix`), with the claims' estimate on the logit scale.
    noise floor      per method, the seed-to-seed standard deviation of a model's mean gold score on
                     the reporting half, pooled over its configurations: √(mean of the per-configuration
                     sample variances); None with one seed per configuration.
Every interval of a reported mean comes from `reported_estimate`: the claims' estimate, on the scale
that keeps it inside the column's range (SCALES: shares on the logit scale, KL and lengths on the log).
Rankings and picks (best_run, percentile_run, top_k_runs of alignlab.analysis.runs) apply to
configurations as they do to runs: both have a name and a score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alignlab.analysis.runs import RunRecord, param_sort_key, parameter_name
from alignlab.evidence import N_RESAMPLES, Estimate, Resampled, Resampler, estimate, split_prompts
from alignlab.evidence.split import separate_selection
from alignlab.evidence.bootstrap import combine


@dataclass
class Configuration:
    name: str
    method: str
    params: dict                                     # hyper-parameters without the seed
    runs: list[RunRecord] = field(default_factory=list)  # one per seed, in seed order
    score: float = float("nan")                      # selection-half mean gold (set by SweepEvidence)

    @property
    def seeds(self) -> list:
        return [r.params.get("seed") for r in self.runs]

    def has(self, column: str) -> bool:
        return all(has_column(r, column) for r in self.runs)

    def matrix(self, column: str, prompts) -> np.ndarray:
        """[seeds, prompts] of a per-sample column on the given prompt ids (as text)."""
        return np.array([_by_prompt(r, column, prompts) for r in self.runs])


# Per-sample outcomes against a baseline response, from the gold scores: strict wins as the
# Hitchhiker paper counts them, and ties apart (the study world's discrete gold reward ties often).
OUTCOMES = {"win_vs_chosen": ("chosen_score", np.greater), "tie_vs_chosen": ("chosen_score", np.equal),
            "win_vs_sft": ("sft_score", np.greater), "tie_vs_sft": ("sft_score", np.equal)}


# The range of each per-sample column's mean, as the scale its interval is computed on
# (alignlab.evidence.bootstrap.estimate): shares in [0, 1] on the logit scale, KL and lengths (≥ 0) on
# the log scale; a column not named here (gold, proxy) can take any value.
SCALES = {"win_vs_chosen": "logit", "tie_vs_chosen": "logit", "win_vs_sft": "logit", "tie_vs_sft": "logit",
          "kl": "log", "ln_kl": "log", "length": "log"}


def has_column(run: RunRecord, column: str) -> bool:
    base = OUTCOMES[column][0] if column in OUTCOMES else column
    return run.samples.get(base) is not None


def _column(run: RunRecord, column: str) -> np.ndarray:
    if column in OUTCOMES:
        base, compare = OUTCOMES[column]
        return compare(_column(run, "gold_score"), _column(run, base)).astype(np.float64)
    return np.asarray(run.samples[column], dtype=np.float64)


def _by_prompt(run: RunRecord, column: str, prompts) -> np.ndarray:
    position = {str(p): i for i, p in enumerate(run.samples["prompt_id"])}
    missing = [p for p in prompts if p not in position]
    if missing:
        raise ValueError(f"run {run.name} has no {column} for prompt {missing[0]}")
    return _column(run, column)[[position[p] for p in prompts]]


def _on(run: RunRecord, evaluation: str) -> RunRecord:
    """The run with another of its evaluations ("indist", "selection") in the place of its test one."""
    return RunRecord(run.name, run.method, run.params, {}, getattr(run, evaluation))


def _has_samples(run: RunRecord) -> bool:
    return run.samples.get("prompt_id") is not None and run.samples.get("gold_score") is not None


def configuration_name(config: Configuration, alongside: list[Configuration]) -> str:
    """`config`'s name among its method's configurations `alongside`: the parameters in which they
    differ (and the learning rate), in the order its runs record them."""
    absent = object()
    differing = {name for other in alongside for name in other.params
                 if len({repr(c.params.get(name, absent)) for c in alongside}) > 1}
    return parameter_name(config.method, {name: value for name, value in config.params.items()
                                          if name in differing or name == "learning_rate"})


def group_configurations(runs) -> dict[str, list[Configuration]]:
    """Runs grouped into configurations by their parameters (same method and hyper-parameters but
    the seed), per method; the names come from the parameters too (`configuration_name`)."""
    groups: dict = {}
    for run in runs:
        params = {k: v for k, v in run.params.items() if k != "seed"}
        key = (run.method, tuple(sorted((k, repr(v)) for k, v in params.items())))
        if key not in groups:
            groups[key] = Configuration("", run.method, params)
        groups[key].runs.append(run)
    by_method: dict[str, list[Configuration]] = {}
    for config in groups.values():
        config.runs.sort(key=lambda r: (param_sort_key(r.params.get("seed")), r.name))
        by_method.setdefault(config.method, []).append(config)
    for configs in by_method.values():
        for config in configs:
            config.name = configuration_name(config, configs)
    return by_method


class SweepEvidence:
    """The configurations of a sweep, scored on the selection half, and the reporting half's resampler."""

    def __init__(self, runs, sft: RunRecord | None, n_resamples: int = N_RESAMPLES, seed: int = 0):
        usable = [r for r in runs if _has_samples(r)]
        self.unusable = [r.name for r in runs if not _has_samples(r)]  # no per-sample gold scores to judge
        self.sft = sft if sft is not None and _has_samples(sft) else None
        reference = self.sft or (usable[0] if usable else None)
        prompts = [] if reference is None else list(dict.fromkeys(str(p) for p in reference.samples["prompt_id"]))
        self.by_method: dict[str, list[Configuration]] = {}
        self.split, self.resampler = None, None
        self.n_resamples, self.seed = n_resamples, seed
        self._reported: dict = {}
        self._indist_resampler: Resampler | None = None
        if len(prompts) < 2:  # nothing to split: every claim is untested, every section says why
            return
        separate = bool(usable) and all(_has_samples(_on(r, "selection")) for r in usable)
        self.split = (separate_selection(usable[0].selection["prompt_id"], prompts) if separate
                      else split_prompts(prompts))
        self.by_method = group_configurations(usable)
        for configs in self.by_method.values():
            for config in configs:
                ranked_on = [_on(r, "selection") if separate else r for r in config.runs]
                config.score = float(np.mean([_by_prompt(r, "gold_score", self.split.selection) for r in ranked_on]))
        self.resampler = Resampler(len(self.split.reporting), n_resamples, seed)

    def reported(self, config: Configuration, column: str = "gold_score") -> np.ndarray:
        """[seeds, reporting prompts] of a configuration's column (computed once per report)."""
        if (config.name, column) not in self._reported:
            self._reported[config.name, column] = config.matrix(column, self.reporting)
        return self._reported[config.name, column]

    @property
    def reporting(self) -> tuple[str, ...]:
        return () if self.split is None else self.split.reporting

    def family_mask(self, families: dict | None, family: str) -> np.ndarray:
        named = {str(p): f for p, f in (families or {}).items()}
        return np.array([named.get(p) == family for p in self.reporting])

    def mean(self, config: Configuration, column: str = "gold_score", mask=None) -> Resampled:
        """The reported mean of a configuration's column (reporting half, resampled)."""
        return self.resampler.mean(self.reported(config, column), config.name, mask, column)

    def baseline_mean(self, column: str = "gold_score", mask=None) -> Resampled:
        """The SFT baseline's reported mean: a fixed model, resampled over prompts only."""
        return self.resampler.mean(self.sft_matrix(column), None, mask, column)

    def reported_estimate(self, config: Configuration | None, column: str = "gold_score", mask=None) -> Estimate:
        """The reported mean of a configuration's (None: the baseline's) column with its 95% CI, inside
        the column's range (SCALES)."""
        q = self.baseline_mean(column, mask) if config is None else self.mean(config, column, mask)
        return estimate(q, scale=SCALES.get(column, "identity"))

    def reported_value(self, config: Configuration, column: str = "gold_score") -> float:
        return float(self.reported(config, column).mean())

    def reported_value_of_baseline(self, column: str = "gold_score") -> float:
        return float(self.sft_matrix(column).mean())

    def in_distribution_gap(self, config: Configuration | None) -> Resampled | None:
        """In-distribution minus reported (OOD) mean gold of a configuration (None: the SFT baseline),
        or None without an in-distribution evaluation. The in-distribution prompts are resampled on
        their own draw; a configuration's seeds are drawn alike in both (same key, same seed), since a
        lucky seed is lucky on both prompt sets."""
        runs = [self.sft] if config is None else config.runs
        if not runs or not all(_has_samples(_on(r, "indist")) for r in runs):
            return None
        prompts = list(dict.fromkeys(str(p) for p in runs[0].indist["prompt_id"]))
        if len(prompts) < 2:
            return None
        if self._indist_resampler is None or self._indist_resampler.n_prompts != len(prompts):
            self._indist_resampler = Resampler(len(prompts), self.n_resamples, self.seed)
        indist = np.array([_by_prompt(_on(r, "indist"), "gold_score", prompts) for r in runs])
        inside = self._indist_resampler.mean(indist, None if config is None else config.name, column="indist")
        outside = self.baseline_mean() if config is None else self.mean(config)
        return self.difference(inside, outside)

    def noise_floor(self, method: str) -> float | None:
        variances = [np.var(self.reported(c).mean(axis=1), ddof=1)
                     for c in self.by_method.get(method, []) if len(c.runs) > 1]
        return float(np.sqrt(np.mean(variances))) if variances else None

    def difference(self, a: Resampled, b: Resampled) -> Resampled:
        return combine(lambda x, y: x - y, a, b)

    def win_matrix(self, models: dict) -> dict:
        """Head-to-head gold win, tie and loss shares between models on the reporting half.

        models maps a display name to a Configuration or to None (the SFT baseline). Cell (i, j): over
        the reporting prompts, the share of (seed of i, seed of j) pairs in which i's response has the
        strictly higher gold score (the paper's strict wins; ties are shown apart, so win(i, j) +
        tie(i, j) + win(j, i) = 1). Its 95% CI is the claims' estimate (two-level bootstrap, Student t at
        the Welch–Satterthwaite df) on the logit scale (`win_share`).
        """
        names = list(models)
        n = len(names)
        cells = {key: [[None] * n for _ in range(n)] for key in ("rate", "tie", "ci_low", "ci_high")}
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i == j:
                    continue
                share = self.win_share(models[a], models[b])
                cells["rate"][i][j] = share.value
                cells["tie"][i][j] = float(self.outcomes(models[a], models[b], np.equal).mean())
                cells["ci_low"][i][j], cells["ci_high"][i][j] = estimate(share, scale="logit").ci
        return {"names": names, **cells, "prompts": len(self.reporting)}

    def win_share(self, a: Configuration | None, b: Configuration | None, outcome=np.greater) -> Resampled:
        """The share of (seed of a, seed of b, reporting prompt) triples in which a's gold score is
        `outcome` (greater: a strict win) than b's; None is the SFT baseline.

        With w[s, t, p] the outcome of a's seed s against b's seed t on prompt p, the share is the mean
        of w, and its two-level resampling is that of
            mean_a(w averaged over t) + mean_b(w averaged over s) − mean(w averaged over s and t):
        the first varies with a's seeds (drawn as a's other means are) and the prompts, the second with
        b's seeds and the prompts, the third, fixed in seeds, takes the prompts' part out once. Each
        seed level is the share's first-order (Hoeffding) part; the a × b seed term, of order 1/(S_a·S_b),
        is left out."""
        w = self.outcomes(a, b, outcome)
        pair = f"{outcome.__name__}: {'baseline' if a is None else a.name} vs {'baseline' if b is None else b.name}"
        of_a = self.resampler.mean(w.mean(axis=1), None if a is None else a.name, column=f"{pair}, row seeds")
        of_b = self.resampler.mean(w.mean(axis=0), None if b is None else b.name, column=f"{pair}, column seeds")
        shared = self.resampler.mean(w.mean(axis=(0, 1)), None, column=pair)
        return combine(lambda p, q, r: p + q - r, of_a, of_b, shared)

    def outcomes(self, a: Configuration | None, b: Configuration | None, outcome=np.greater) -> np.ndarray:
        """[S_a, S_b, P]: whether a's seed s has a gold score `outcome` than b's seed t on prompt p."""
        x, y = (self.sft_matrix("gold_score") if c is None else self.reported(c) for c in (a, b))
        return outcome(x[:, None, :], y[None, :, :]).astype(np.float64)

    def sft_matrix(self, column: str) -> np.ndarray:
        return _by_prompt(self.sft, column, self.reporting)[None, :]

