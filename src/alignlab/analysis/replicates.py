"""A sweep as configurations with replicate seeds, its prompts split into selection and reporting
halves, its seeds into ranking and reporting seeds, and the resampling every claim of one report
shares (`SweepEvidence`).

Definitions
    configuration    one grid point (method and hyper-parameters): the runs whose recorded parameters
                     are equal but for the training seed. Its name says what sets it apart: the
                     method and the parameters in which the method's configurations differ, with
                     the learning rate always (a sweep's run names, less their seed).
    ranking seeds    a configuration's seeds in seed order at the 1st, 3rd, … place (⌈S/2⌉ of them);
                     the other ⌊S/2⌋ (2nd, 4th, …) are its reporting seeds. One seed does both. A pick
                     reported on one seed (S = 2 or 3) cannot measure its training noise, so its claims
                     stay inconclusive: deciding on picks takes 4 seeds or more (with 4 or 5, the 2
                     reporting seeds give a claim on a pick 1 degree of freedom).
    score            a configuration's mean gold reward over its RANKING seeds on the SELECTION half (or
                     on the user's own selection prompts, when every run was evaluated on them): the
                     score that ranks configurations, so every pick (best, top-25%, top-k%, a
                     best-of-k search) is made on data that never judges it — other prompts
                     (alignlab.evidence.split) and other seeds. Prompts alone are not enough: a
                     lucky seed is a better model on every prompt, so a configuration picked for its
                     lucky seeds on one half stays lucky on the other, and the larger grid wins.
    reported mean    the mean over seeds on the REPORTING half, with the two-level bootstrap
                     (alignlab.evidence.bootstrap): what every number and verdict is computed from.
                     Over every seed where nothing was ranked (a grid mean, shares of the whole grid,
                     a method with one configuration); over its reporting seeds for a configuration a
                     ranking picked (`picked`): a ranked configuration is reported as `picked(config)`.
    win share        head to head, the share of (seed of a, seed of b, reporting prompt) comparisons a wins
                     (`win_share`, `win_matrix`), with the claims' estimate on the logit scale.
    noise floor      per method, the seed-to-seed standard deviation of a model's mean gold score on
                     the reporting half, pooled over its configurations: √(mean of the per-configuration
                     sample variances); None with one seed per configuration.
Every interval of a reported mean comes from `reported_estimate`: the claims' estimate, on the scale
that keeps it inside the column's range (SCALES: shares on the logit scale, KL and lengths on the log).
Rankings and picks (best_run, percentile_run, top_k_runs of alignlab.analysis.runs) apply to
configurations as they do to runs: both have a name and a score.

Why a hold-out, not cross-fitting (pick on one seed fold, report on the other, then swap the roles and
average): the swapped fold reports on the very seeds that picked in the first, so the two terms are
correlated through the picks, and a test that holds the picks fixed is too liberal — 3.2–4.0%
one-sided rejections at a nominal 2.5% in a seed-level simulation (6 configurations against 1, 3–6
seeds, 10⁵ draws), however the seed variance is estimated. A hold-out's reporting seeds are
independent of its pick, so the pick's seed variance, estimated on them alone, is what the
bootstrap computes for any configuration. The ranking seeds are the larger half because a pick
reported on 2 of 3 seeds has 1 degree of freedom for its training noise, where the report's t test
is far too liberal (family-wise 11.7% false verdicts at the default grid's shape, 600 simulated
sweeps); with 1 reporting seed its claims are honestly inconclusive. With 4 or 5 seeds a pick is
reported on 2, where Welch–Satterthwaite's df were too liberal again (3.3–3.7% one-sided where Welch's
t on the same picks keeps 2.5–2.7%); a statistic a 2-seed configuration moves now gets df 1
(alignlab.evidence.bootstrap), which holds the level with room to spare (0.0% one-sided, 1,000
sweeps: tests/evidence/test_selection_luck.py) and decides only large effects. From 6 seeds on a
pick is reported on 3 or more, at Welch–Satterthwaite's df.
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
    score: float = float("nan")                      # ranking seeds' selection-half mean gold (set by SweepEvidence)

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
    ids = np.asarray(run.samples["prompt_id"]).astype(str)
    wanted = np.asarray(prompts, dtype=str)
    order = np.argsort(ids, kind="stable")
    found = order[np.minimum(np.searchsorted(ids, wanted, sorter=order), len(ids) - 1)] if len(ids) else []
    missing = wanted[ids[found] != wanted] if len(ids) else wanted
    if len(missing):
        raise ValueError(f"run {run.name} has no {column} for prompt {missing[0]}")
    return _column(run, column)[found]


def _on(run: RunRecord, evaluation: str) -> RunRecord:
    """The run with another of its evaluations ("indist", "selection") in the place of its test one."""
    return RunRecord(run.name, run.method, run.params, {}, getattr(run, evaluation))


def _has_samples(run: RunRecord) -> bool:
    return run.samples.get("prompt_id") is not None and run.samples.get("gold_score") is not None


SEED_RULE = ("each configuration's seeds in seed order: the 1st, 3rd, … rank it (with the selection prompts); "
             "a picked configuration reports on the 2nd, 4th, …; a method with one configuration, or a "
             "configuration with one seed, reports every seed")


def ranking_seeds(n_seeds: int) -> list[int]:
    """Positions, in seed order, of the seeds that rank a configuration of n_seeds (the 1st, 3rd, …)."""
    return list(range(0, n_seeds, 2))


def reporting_seeds(n_seeds: int) -> list[int]:
    """Positions, in seed order, of the seeds that report a picked configuration (the 2nd, 4th, …; its
    only seed when it has one)."""
    return list(range(1, n_seeds, 2)) or list(range(n_seeds))


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
    """The configurations of a sweep, scored on their ranking seeds and the selection half, and the
    reporting half's resampler."""

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
        self._picked: dict = {}
        self._indist_resampler: Resampler | None = None
        if len(prompts) < 2:  # nothing to split: every claim is untested, every section says why
            return
        separate = bool(usable) and all(_has_samples(_on(r, "selection")) for r in usable)
        self.split = (separate_selection(usable[0].selection["prompt_id"], prompts) if separate
                      else split_prompts(prompts))
        self.by_method = group_configurations(usable)
        for configs in self.by_method.values():
            for config in configs:
                ranking = [config.runs[i] for i in ranking_seeds(len(config.runs))]
                ranked_on = [_on(r, "selection") if separate else r for r in ranking]
                config.score = float(np.mean([_by_prompt(r, "gold_score", self.split.selection) for r in ranked_on]))
        self.resampler = Resampler(len(self.split.reporting), n_resamples, seed, self.seed_values)

    @property
    def seed_values(self) -> dict:
        """Each configuration's name -> its training seeds: configurations that share seed values are
        resampled jointly (alignlab.evidence.bootstrap). Runs without a recorded seed, or with a seed
        repeated within their configuration, say nothing about which seeds are shared: left out."""
        return {c.name: c.seeds for configs in self.by_method.values() for c in configs
                if None not in c.seeds and len(set(c.seeds)) == len(c.seeds)}

    def picked(self, config: Configuration) -> Configuration:
        """The configuration as a pick of its method's grid reports it: on its reporting seeds, which
        its score never saw (the same object for every pick of it). A method with one configuration
        picks nothing, and a configuration with one seed has no other: both keep every seed.
        A pick and its whole configuration share a name: no statistic combines the two."""
        if len(self.by_method.get(config.method, [])) < 2 or len(config.runs) < 2:
            return config
        if config.name not in self._picked:
            runs = [config.runs[i] for i in reporting_seeds(len(config.runs))]
            self._picked[config.name] = Configuration(config.name, config.method, config.params, runs,
                                                      config.score)
        return self._picked[config.name]

    def reported(self, config: Configuration, column: str = "gold_score") -> np.ndarray:
        """[seeds, reporting prompts] of a configuration's column (computed once per report)."""
        key = (config.name, tuple(r.name for r in config.runs), column)
        if key not in self._reported:
            self._reported[key] = config.matrix(column, self.reporting)
        return self._reported[key]

    @property
    def reporting(self) -> tuple[str, ...]:
        return () if self.split is None else self.split.reporting

    def family_mask(self, families: dict | None, family: str) -> np.ndarray:
        named = {str(p): f for p, f in (families or {}).items()}
        return np.array([named.get(p) == family for p in self.reporting])

    def mean(self, config: Configuration, column: str = "gold_score", mask=None) -> Resampled:
        """The reported mean of a configuration's column (reporting half, resampled)."""
        return self.resampler.mean(self.reported(config, column), config.name, mask, column, config.seeds)

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
            self._indist_resampler = Resampler(len(prompts), self.n_resamples, self.seed, self.seed_values)
        indist = np.array([_by_prompt(_on(r, "indist"), "gold_score", prompts) for r in runs])
        inside = self._indist_resampler.mean(indist, None if config is None else config.name, column="indist",
                                             seeds=None if config is None else config.seeds)
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
        of_a = self.resampler.mean(w.mean(axis=1), None if a is None else a.name, column=f"{pair}, row seeds",
                                   seeds=None if a is None else a.seeds)
        of_b = self.resampler.mean(w.mean(axis=0), None if b is None else b.name, column=f"{pair}, column seeds",
                                   seeds=None if b is None else b.seeds)
        shared = self.resampler.mean(w.mean(axis=(0, 1)), None, column=pair)
        return combine(lambda p, q, r: p + q - r, of_a, of_b, shared)

    def outcomes(self, a: Configuration | None, b: Configuration | None, outcome=np.greater) -> np.ndarray:
        """[S_a, S_b, P]: whether a's seed s has a gold score `outcome` than b's seed t on prompt p."""
        x, y = (self.sft_matrix("gold_score") if c is None else self.reported(c) for c in (a, b))
        return outcome(x[:, None, :], y[None, :, :]).astype(np.float64)

    def sft_matrix(self, column: str) -> np.ndarray:
        return _by_prompt(self.sft, column, self.reporting)[None, :]

