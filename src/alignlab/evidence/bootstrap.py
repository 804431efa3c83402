"""The two-level bootstrap of configuration means, and the estimate every claim is judged by.

A configuration (one grid point) is trained with S seeds and each model is evaluated on the same P
reporting prompts: a matrix x[s, p]. Its score is the mean over seeds of the mean over prompts. Two
sources of noise stand behind a difference between configurations: which seeds training drew (a
lucky seed is a better model on every prompt) and which prompts the test set holds.

Resampling (one `Resampler` per report, so every claim sees the same draws)
    prompts   one draw of P prompts with replacement per resample, shared by every configuration and
              metric: comparisons stay paired on prompts, as the per-prompt difference is what varies.
    seeds     per configuration, S seeds with replacement per resample (a draw fixed by the
              configuration's key, so its gold and length are resampled alike). The bootstrap of a
              mean of S values has variance (S − 1)/S · s²/S; the seed deviations are scaled by
              √(S/(S − 1)) first, so that the resampled means vary as s²/S, the unbiased estimate.
              Configurations that share seed values (seed 0 of every β trained on the same data order:
              the usual sweep, and the study's) are not independent: a lucky seed is lucky in each of
              them. Their seeds are drawn jointly, one draw over the union of their seed values
              (`shared_seed_components`), each configuration weighting its own seeds by that draw
              (renormalised over them; a resample that draws none of them has no value and is left
              out). Sums over such configurations then vary as they do, correlated or not: resampled
              apart, a grid mean over 4 configurations whose seeds correlate 0.5 has its seed
              variance underestimated 2.5×, and 7.2% family-wise false verdicts were measured at
              nominal 5% (tests/evidence/test_calibration.py). Configurations with seed values of
              their own keep the draw above.
Each quantity is resampled three ways: both levels (for bands, e.g. expected best-of-k curves), seeds
only and prompts only. Seeds and prompts are crossed (every model sees every prompt), so both one-level
variances count the seed × prompt interaction: a seed-level mean carries it as σ²_w/P, a prompt-level
mean as σ²_w/S. The interaction is estimated from the double-centred residuals of each configuration's
matrix (σ²_w = Σ e² / ((S − 1)(P − 1))) and its σ²_w/(S·P) is counted once, carried through every
derived quantity by its gradient (`combine`).

Seed effects. Each quantity also carries, per configuration it depends on, its seed-level part: per
seed, the gradient-weighted sum of the seed's means over the configuration's leaves (the means that
`Resampler.mean` returned, chained through `combine`). For a mean it is the seed's mean itself; for a
linear statistic it is exact, for a smooth one (a ratio) the delta method's. Its s²/S is configuration
c's share v_c of the seed-level variance; a configuration the quantity does not move with (weight 0 in
an expected best-of-k, a difference in which it cancels) has v_c = 0.

Estimate (`estimate`)
    se        √(v_s + v_p − v_w): v_s and v_p the seeds-only and prompts-only resample variances, v_w the
              interaction both count (never below the larger of v_s and v_p)
    df        Welch–Satterthwaite over the independent seed units that carry the statistic:
                  se⁴ / (Σ_k v_k² / (n_k − 1) + v_p² / (P − 1)),
              k a configuration with seeds of its own (n_k = S_k) or a group of configurations that share
              seed values (n_k: the distinct values; its seed effects summed per value before their
              variance is taken), v_s split between them in proportion to their seed-effect variances;
              when one unit's seeds dominate, df → its n − 1. Shared seeds thus cost degrees of freedom:
              3 seeds shared by every configuration give df 2, as they must, for only 3 independent
              draws of training noise exist. A quantity that moves with no mean
              smoothly (a share of indicators) has seed effects 0 everywhere: its v_s counts with the
              fewest S_c − 1, Welch–Satterthwaite's lower bound. A quantity that a configuration of
              exactly 2 seeds moves gets df 1: that configuration's seed variance is a single squared
              difference, and when the two seeds happen to lie close its share of v_s shrinks and the
              Welch–Satterthwaite df grows just as the statistic grows (measured: 12.7% family-wise
              false verdicts at 2 seeds with 20× unequal noise; with df 1, under 1%). Three seeds or more
              keep Welch–Satterthwaite, as the calibration tests check
    CI        value ± t(0.975, df) · se; for a bounded quantity (scale "logit": rates and shares in
              [0, 1]; "log": KL and lengths, ≥ 0) the same t·se on the transformed scale, its se by the
              delta method (se·|g′(value)|), back-transformed, so the interval stays inside the range;
              a rate of exactly 0 (or 1) gets the exact one-sided binomial bound [0, 1 − 0.025^(1/P)]
              (each prompt one trial), a log-scale 0 the point 0
    p-value   two-sided against a null region [low, high] (a point 0 for most claims), on the quantity's
              own scale: 2 · P(T_df > distance from the region / se); 1 inside the region, and 1 when
              se = 0: no variation was measured, so there is no evidence either way
              (`Estimate.without_spread`)
With three seeds the seed level has few degrees of freedom, and a normal or percentile interval
would be far too narrow (a percentile bootstrap of 3 values covers about 74%, not 95%); Student's t
with these df keeps the error rates, as the simulation tests check (tests/evidence), also when the
methods' seed noise differs 20× (pooling Σ(S − 1) over every configuration a quantity touches would
count df the dominant configuration does not have).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
SCHEMES = ("full", "seeds", "prompts")


@dataclass(frozen=True)
class Resampled:
    """A quantity's value and its resamples under each scheme. `seed_effects` maps each trained
    configuration it depends on (fixed baselines are not listed) to its seed-level part: per seed of
    that configuration, Σ over the configuration's leaf means of ∂ quantity / ∂ leaf · the seed's mean
    (zeros where the quantity does not move with the configuration)."""

    value: float
    full: np.ndarray
    seeds: np.ndarray
    prompts: np.ndarray
    prompt_masks: dict  # resampler (its id) -> bool [P]: the prompts of each prompt set the quantity uses
    seed_effects: dict = field(default_factory=dict)  # configuration key -> float [S]
    shared_seeds: dict = field(default_factory=dict)  # key -> (its group, its seed values) where keys share seeds
    gradient: dict = field(default_factory=dict)      # leaf mean -> ∂ quantity / ∂ leaf mean
    interaction: dict = field(default_factory=dict)   # leaf mean -> its σ²_w/(S·P), counted by both levels

    @property
    def configs(self) -> dict:
        """Each configuration the quantity depends on -> its number of seeds."""
        return {key: len(effects) for key, effects in self.seed_effects.items()}

    @property
    def seed_units(self) -> list[tuple[float, int, bool]]:
        """Per independent seed unit (a configuration with seeds of its own, or the configurations that
        share seed values): (its share of the seed-level variance, its df n − 1, whether it moves the
        quantity). A unit's share is the variance of its per-seed-value sums of centred seed effects,
        each over its configuration's S: for one configuration s²/S of its seed effects."""
        units: dict = {}
        for key, effects in self.seed_effects.items():
            group, values = self.shared_seeds.get(key, ((key,), tuple(range(len(effects)))))
            units.setdefault(group, []).append((values, effects))
        parts = []
        for members in units.values():
            column: dict = {}  # seed value -> its place among the unit's distinct values
            for vs, _ in members:
                for v in vs:
                    column.setdefault(v, len(column))
            summed = np.zeros(len(column))
            for vs, effects in members:
                summed[[column[v] for v in vs]] += (effects - effects.mean()) / len(effects)
            n = len(column)
            if n > 1:
                parts.append((float((summed ** 2).sum()) * n / (n - 1), n - 1,
                              any(bool(np.any(e != 0)) for _, e in members)))
        return parts

    @property
    def carried_by_two_seeds(self) -> bool:
        """Whether a unit of exactly 2 seeds moves the quantity: its seed variance is then one squared
        difference (1 df), and Welch–Satterthwaite's df, which grows just when that difference happens
        to be small, would overstate the evidence (see the module docstring)."""
        return any(df == 1 and moves for _, df, moves in self.seed_units)

    @property
    def interaction_variance(self) -> float:
        return float(sum(self.gradient[leaf] ** 2 * v for leaf, v in self.interaction.items()))

    @property
    def n_prompts(self) -> int:
        return int(sum(mask.sum() for mask in self.prompt_masks.values()))

    @property
    def fewest_seeds(self) -> int | None:
        return min(self.configs.values()) if self.configs else None


def combine(fn: Callable, *quantities: Resampled) -> Resampled:
    """fn applied to the values and to each scheme's resamples of `quantities` (numpy broadcasting)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        parts = {scheme: np.asarray(fn(*(getattr(q, scheme) for q in quantities)), dtype=np.float64)
                 for scheme in SCHEMES}
        value = float(fn(*(q.value for q in quantities)))
    seed_effects, interaction, gradient, masks, shared = {}, {}, {}, {}, {}
    values = [q.value for q in quantities]
    for i, q in enumerate(quantities):
        interaction.update(q.interaction)
        shared.update(q.shared_seeds)
        for prompt_set, mask in q.prompt_masks.items():
            masks[prompt_set] = mask | masks[prompt_set] if prompt_set in masks else mask
        step = 1e-6 * max(1.0, abs(q.value))
        with np.errstate(divide="ignore", invalid="ignore"):
            moved = float(fn(*(v + step if j == i else v for j, v in enumerate(values))))
        slope = (moved - value) / step if np.isfinite(moved) and np.isfinite(value) else 0.0
        for leaf, inner in q.gradient.items():
            gradient[leaf] = gradient.get(leaf, 0.0) + slope * inner
        for key, effects in q.seed_effects.items():
            seed_effects[key] = seed_effects.get(key, 0.0) + slope * effects
    return Resampled(value, parts["full"], parts["seeds"], parts["prompts"],
                     masks, seed_effects, shared, gradient, interaction)


def resample_counts(n: int, n_resamples: int, seed) -> np.ndarray:
    """[n_resamples, n]: how often each of n items is drawn in each resample of n with replacement
    (seed: anything numpy's default_rng takes). A resampled mean of every column of a [columns, n]
    table is then one product, counts @ table.T / n."""
    picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = (picks + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def shared_seed_components(seed_values: dict) -> dict:
    """key -> (its group: the sorted keys linked to it by shared seed values, the group's seed values
    in a fixed order), for the configurations (keys of `seed_values`, each mapped to its seed values)
    that share a seed value with another; a configuration with seed values of its own is left out."""
    parent = {key: key for key in seed_values}

    def root(key):
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    first_with = {}
    for key, values in seed_values.items():
        for value in values:
            parent[root(key)] = root(first_with.setdefault(value, key))
    groups: dict = {}
    for key in seed_values:
        groups.setdefault(root(key), []).append(key)
    linked = {}
    for keys in groups.values():
        if len(keys) > 1:
            group = tuple(sorted(keys))
            values = tuple(sorted({v for k in keys for v in seed_values[k]}, key=repr))
            linked.update({k: (group, values) for k in keys})
    return linked


class Resampler:
    """The draws of one report: prompt weights shared by everything, seed weights per configuration
    (jointly for configurations that share seed values: `seed_values` maps each configuration's key
    to its seed values)."""

    def __init__(self, n_prompts: int, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 seed_values: dict | None = None):
        if n_prompts < 2:
            raise ValueError(f"a bootstrap over prompts needs at least 2 prompts, got {n_prompts}")
        self.n_prompts, self.n_resamples, self.seed = n_prompts, n_resamples, seed
        self.prompt_weights = resample_counts(n_prompts, n_resamples, [seed, 0]) / n_prompts
        self.shared_seeds = shared_seed_components(seed_values or {})
        self._seed_weights: dict = {}

    def seed_weights(self, key: str, n_seeds: int, values=None) -> np.ndarray:
        """[R, n_seeds] weights of a configuration's seeds (its seed values `values`, in row order)."""
        group, union = self.shared_seeds.get(key, (None, ()))
        if group is not None and (values is None or len(values) != n_seeds or not set(values) <= set(union)):
            # drawn apart, a configuration that shares seeds with others would understate the noise
            others = ", ".join(k for k in group if k != key)
            raise ValueError(f"{key}: its seed values (given: {values}) must be those of its {n_seeds} rows, out of "
                             f"{list(union)}, which it shares with {others}: they are drawn jointly")
        if group is None:
            if (key, n_seeds) not in self._seed_weights:
                stream = [self.seed, 1, zlib.crc32(key.encode("utf-8"))]
                self._seed_weights[key, n_seeds] = resample_counts(n_seeds, self.n_resamples, stream) / n_seeds
            return self._seed_weights[key, n_seeds]
        if group not in self._seed_weights:
            stream = [self.seed, 2, zlib.crc32("\n".join(group).encode("utf-8"))]
            self._seed_weights[group] = resample_counts(len(union), self.n_resamples, stream)
        drawn = self._seed_weights[group][:, [union.index(v) for v in values]]
        with np.errstate(divide="ignore", invalid="ignore"):
            return drawn / drawn.sum(axis=1, keepdims=True)

    def mean(self, values, key: str | None, mask=None, column: str = "", seeds=None) -> Resampled:
        """The mean over seeds (rows) and prompts (columns) of one configuration's matrix.

        key names the configuration (None: a fixed baseline, one row, no seed level); mask (bool [P])
        restricts the mean to some prompts (a family), resampled within the shared prompt draw; column
        names what the values are, so that two columns of one configuration stay apart in `combine`;
        seeds: the rows' seed values, by which configurations that share them are drawn jointly.
        A resample that draws none of the mask's prompts (or, for configurations drawn jointly, none of
        the configuration's seeds) has no mean (NaN), and `estimate` leaves it out."""
        x = np.atleast_2d(np.asarray(values, dtype=np.float64))
        n_seeds, n_prompts = x.shape
        if n_prompts != self.n_prompts:
            raise ValueError(f"{key or 'baseline'}: {n_prompts} prompts, the resampler has {self.n_prompts}")
        mask = np.ones(n_prompts, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        interaction = 0.0
        kept = int(mask.sum())
        seed_means = x[:, mask].mean(axis=1)
        if n_seeds > 1 and kept > 1:
            inside = x[:, mask]
            residual = (inside - inside.mean(axis=0) - inside.mean(axis=1, keepdims=True) + inside.mean())
            interaction = float((residual ** 2).sum() / ((n_seeds - 1) * (kept - 1))) / (n_seeds * kept)
        if n_seeds > 1:
            centre = x.mean(axis=0)
            x = centre + np.sqrt(n_seeds / (n_seeds - 1)) * (x - centre)
        prompt_full = self.prompt_weights * mask
        prompt_fixed = np.where(mask, 1.0, 0.0)[None, :]
        # Per-seed means under the prompt weights: [R or 1, S].
        with np.errstate(divide="ignore", invalid="ignore"):
            per_seed_drawn = (prompt_full @ x.T) / prompt_full.sum(axis=1, keepdims=True)
        per_seed_fixed = (prompt_fixed @ x.T) / prompt_fixed.sum()
        seed_full = (self.seed_weights(key, n_seeds, seeds) if key is not None and n_seeds > 1
                     else np.full((1, n_seeds), 1.0 / n_seeds))
        shared = ({key: (self.shared_seeds[key][0], tuple(seeds))}
                  if key in self.shared_seeds and seeds is not None else {})
        seed_fixed = np.full((1, n_seeds), 1.0 / n_seeds)
        leaf = (id(self), key, column, mask.tobytes())
        return Resampled(float(x[:, mask].mean()),
                         (per_seed_drawn * seed_full).sum(axis=1),
                         np.broadcast_to((per_seed_fixed * seed_full).sum(axis=1), (self.n_resamples,)),
                         (per_seed_drawn * seed_fixed).sum(axis=1),
                         {id(self): mask}, {key: seed_means} if key is not None else {}, shared,
                         {leaf: 1.0}, {leaf: interaction})


@dataclass(frozen=True)
class Estimate:
    value: float
    se: float
    df: float
    ci: tuple[float, float]
    p_value: float

    @property
    def without_spread(self) -> bool:
        """Every resample gave the value: no variance was measured, so nothing can be significant."""
        return self.se == 0

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": list(self.ci), "p_value": self.p_value, "se": self.se, "df": self.df}


SCALES = ("identity", "logit", "log")  # where a quantity lives: anywhere, in [0, 1], in [0, ∞)


def resample_variance(x: np.ndarray) -> float:
    """The variance (ddof 1) of a quantity's resamples, leaving out those without a value (NaN)."""
    finite = x[np.isfinite(x)]
    return float(finite.var(ddof=1)) if finite.size > 1 else 0.0


def _seed_term(q: Resampled, v_seeds: float) -> float:
    """Σ_k v_k² / (n_k − 1): the seed level's part of the Welch–Satterthwaite denominator, v_s split
    between the independent seed units in proportion to their seed variances (see the module docstring)."""
    parts = q.seed_units
    total = sum(v for v, _, _ in parts)
    if v_seeds == 0 or not parts:
        return 0.0
    if total == 0:  # the quantity does not move smoothly with any mean: Welch–Satterthwaite's lower bound
        return v_seeds ** 2 / min(df for _, df, _ in parts)
    return sum((v_seeds * v / total) ** 2 / df for v, df, _ in parts if v > 0)


def _interval(value: float, se: float, t: float, scale: str, n_prompts: int, level: float) -> tuple[float, float]:
    """value ± t·se on the quantity's scale, back-transformed (delta method: the transformed value's se
    is se·|g′(value)|); a rate on its bound gets the exact one-sided binomial bound over n_prompts."""
    if scale == "identity":
        return value - t * se, value + t * se
    if scale == "logit":
        if not 0 <= value <= 1:
            raise ValueError(f"a rate must lie in [0, 1] for a logit-scale interval, got {value}")
        if value in (0.0, 1.0):
            bound = ((1 - level) / 2) ** (1 / max(n_prompts, 1))
            return (0.0, 1 - bound) if value == 0 else (bound, 1.0)
        centre, half = np.log(value / (1 - value)), t * se / (value * (1 - value))
        return float(1 / (1 + np.exp(half - centre))), float(1 / (1 + np.exp(-half - centre)))
    if scale == "log":
        if value < 0:
            raise ValueError(f"a non-negative quantity is needed for a log-scale interval, got {value}")
        if value == 0:
            return 0.0, 0.0
        factor = float(np.exp(t * se / value))
        return value / factor, value * factor
    raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")


def distance_from_null(value: float, null: tuple[float, float]) -> float:
    """How far value lies outside the null region [low, high] (0 inside it)."""
    low, high = null
    return value - high if value > high else low - value if value < low else 0.0


def estimate(q: Resampled, null: tuple[float, float] = (0.0, 0.0), level: float = 0.95,
             scale: str = "identity") -> Estimate:
    """Value, SE, df, CI and two-sided p-value against the null region (see the module docstring).
    scale "logit" (rates, shares) or "log" (KL, lengths) puts the CI inside the quantity's range; the
    p-value stays on the quantity's own scale."""
    v_seeds, v_prompts = resample_variance(q.seeds), resample_variance(q.prompts)
    variance = max(v_seeds + v_prompts - q.interaction_variance, v_seeds, v_prompts)
    se = float(np.sqrt(variance))
    terms = v_prompts ** 2 / max(q.n_prompts - 1, 1) + _seed_term(q, v_seeds)
    df = float(variance ** 2 / terms) if terms > 0 else float(max(q.n_prompts - 1, 1))
    df = 1.0 if q.carried_by_two_seeds else max(df, 1.0)
    distance = distance_from_null(q.value, null)
    if not np.isfinite(q.value):
        return Estimate(q.value, se, df, (float("nan"), float("nan")), float("nan"))
    t = float(stats.t.ppf(0.5 + level / 2, df))
    # se 0: no variation measured (every resample agrees), so no evidence against the null either.
    p = 1.0 if distance == 0 or se == 0 else min(1.0, 2 * float(stats.t.sf(distance / se, df)))
    return Estimate(q.value, se, df, _interval(q.value, se, t, scale, q.n_prompts, level), p)
