"""The grid of a sweep: named grids (`GRID_PRESETS`) and their expansion into runs (`expand_grid`),
one `RunSpec` per grid point, named by the values that vary."""

from __future__ import annotations

import collections
import itertools
import zlib
from dataclasses import dataclass

from alignlab.analysis.runs import parameter_name
from alignlab.checks import SEED_MAX
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.objectives.registry import get_method
from alignlab.study.config import StudyConfig

# Named grids. Learning rates are multiples of the study's base rate (the world preset's, or the
# `training.learning_rate` you give), because sensible absolute rates differ by orders of magnitude
# between the study world's tiny models and billion-parameter ones.
GRID_PRESETS = {
    # `alignlab run`: four points per method on its own parameters (β, SimPO's β × γ, λ), so that
    # top-25%, the drop claims and best-of-k have more than the best to show; the learning rate stays
    # the base rate (the hitchhiker grid varies it), so that the default world's study fits 10 minutes.
    "small": {"methods": ["dpo", "ln-dpo", "simpo", "var"], "learning_rate_scales": [1.0],
              "grid": {"dpo": {"beta": [0.05, 0.1, 0.3, 0.5]}, "ln-dpo": {"beta": [0.5, 1.0, 2.0, 3.0]},
                       "simpo": {"beta": [2.0, 2.5], "gamma": [0.5, 1.0]}, "var": {"lam": [0.25, 0.5, 1.0, 2.0]}}},
    # The Hitchhiker study: β ranges of the DPO and SimPO papers, each at three learning rates.
    "hitchhiker": {"methods": ["dpo", "ln-dpo", "simpo"], "learning_rate_scales": [0.5, 1.0, 2.0],
                   "grid": {"dpo": {"beta": [0.01, 0.05, 0.1, 0.3, 0.5]},
                            "ln-dpo": {"beta": [0.5, 1.0, 2.0, 3.0, 5.0]},
                            "simpo": {"beta": [1.0, 2.0, 2.5], "gamma": [0.5, 1.0, 1.5]}}},
    # The VAR paper's comparison: VAR's λ grid against DPO's β grid.
    "var": {"methods": ["var", "dpo"], "learning_rate_scales": [0.5, 1.0, 2.0],
            "grid": {"var": {"lam": [0.25, 0.5, 1.0, 2.0, 4.0]}, "dpo": {"beta": [0.01, 0.05, 0.1, 0.3, 0.5]}}},
    # `alignlab run --study var`: two λ for each Z estimator, summed and length-normalised, against two β.
    "var-small": {"methods": ["var", "dpo"], "learning_rate_scales": [1.0],
                  "grid": {"var": {"lam": [0.5, 1.0], "z_estimator": ["batch", "prompt", "sampled"],
                                   "length_normalize": [False, True], "z_samples": [4]},
                           "dpo": {"beta": [0.1, 0.5]}}},
}
TRAINING_GRID_KEYS = ("learning_rate", "epochs")  # grid keys that are training settings, not method parameters


@dataclass
class RunSpec:
    """One grid point: a method, its hyper-parameters and its training settings."""

    name: str
    method: str
    params: dict  # the method's hyper-parameters, resolved (defaults filled in)
    training: dict  # learning_rate, epochs, seed (the seed it trains with: `configuration_seed`)
    replicate: int  # training_seed + i for the i-th replicate: what its name says after "-s"

    @property
    def all_params(self) -> dict:
        return {**self.params, **self.training}


# `alignlab run`'s sequential design (alignlab.analysis.sequential) where the study does not give one:
# 3 seeds per configuration, then up to 6 where the noise keeps a primary claim open, while the runs
# fit 9 minutes, so that the default world's study ends within 10.
RUN_DESIGN = {"max_seeds": 6, "budget_minutes": 9.0}


def sequential_design(config: StudyConfig) -> tuple[int, float | None]:
    """The most seeds a configuration may get and the time budget in minutes (None: none) of the
    sequential design (alignlab.analysis.sequential): the config's, else its `seeds` (a fixed design)
    and no budget."""
    return max(config.max_seeds or config.seeds, config.seeds), config.budget_minutes


SEED_STRIDE = 100_003  # a prime: replicate r of a configuration trains on r · stride + the configuration's offset


def configuration_seed(replicate: int, configuration: str) -> int:
    """The training seed of a configuration's (its run name less the seed) replicate: one of its own.
    A seed value is a data order, and a lucky order lifts every configuration trained on it (their
    scores correlated 0.5–1.0 in the default study), so that configurations sharing seeds count as
    one source of training noise (alignlab.evidence.bootstrap): with 3 seeds shared by every
    configuration, 2 degrees of freedom. Seeds of their own keep the configurations independent.
    Increasing in the replicate, so that a configuration's seeds sort as its replicates."""
    return (replicate * SEED_STRIDE + zlib.crc32(configuration.encode("utf-8")) % SEED_STRIDE) % (SEED_MAX + 1)


def expand_grid(config: StudyConfig, base_training: dict, seeds: int | None = None) -> list[RunSpec]:
    """The runs of a study: per method, the product of its grid values (preset, then `grid`, whose
    entries win), learning rates, epochs and seeds (`seeds` of them; default the config's). Names carry
    every value that varies; the replicate's number (training_seed + i) stands for the seed, which is the
    configuration's own (`configuration_seed`)."""
    preset = {}
    if config.grid_preset is not None:
        if config.grid_preset not in GRID_PRESETS:
            raise AlignlabError(unknown_name_message("config: grid_preset", config.grid_preset, list(GRID_PRESETS)))
        preset = GRID_PRESETS[config.grid_preset]
    methods = config.methods or preset.get("methods") or []
    if not methods:
        raise AlignlabError("config: no methods; set 'methods' or a 'grid_preset'")
    for key in config.grid:
        if key != "all" and key not in methods:
            raise AlignlabError(unknown_name_message("config: grid names method", key, ["all", *methods]))
    for key in config.method_params:
        if key not in methods:
            raise AlignlabError(unknown_name_message("config: method_params names method", key, methods))
    base_lr = base_training["learning_rate"]
    shared_grid = {"learning_rate": [base_lr * s for s in preset.get("learning_rate_scales", [1.0])],
                   "epochs": [base_training["epochs"]], **config.grid.get("all", {})}
    seeds = [config.first_training_seed + i for i in range(seeds or config.seeds)]
    runs = []
    for method_name in methods:
        method = get_method(method_name)
        names = {hp.name for hp in method.hyperparameters}
        grid = {**{k: [v] for k, v in config.method_params.get(method_name, {}).items()},
                **({k: v for k, v in preset["grid"].get(method_name, {}).items()} if preset else {}),
                **shared_grid, **config.grid.get(method_name, {})}
        for key, values in grid.items():
            if key not in names and key not in TRAINING_GRID_KEYS:
                raise AlignlabError(unknown_name_message(f"config: grid.{method_name} has unknown key", key,
                                                         sorted(names | set(TRAINING_GRID_KEYS))))
            if not isinstance(values, list) or not values:
                raise AlignlabError(f"config: grid.{method_name}.{key} must be a non-empty list of values, "
                                    f"got {values!r}")
        grid["seed"] = seeds
        keys = sorted(grid, key=lambda k: k not in names)  # method parameters first, in names too
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            training = {k: point.pop(k) for k in (*TRAINING_GRID_KEYS, "seed")}
            try:
                params = method.resolve(point)
            except AlignlabError as err:
                raise AlignlabError(f"config: grid (or method_params) of {err}") from None
            varying = [k for k in keys if len(grid[k]) > 1 or k in ("learning_rate", "seed")]
            replicate = training["seed"]
            configuration = parameter_name(method_name, {k: {**params, **training}[k] for k in varying if k != "seed"})
            training["seed"] = configuration_seed(replicate, configuration)
            name = parameter_name(method_name, {k: {**params, **training, "seed": replicate}[k] for k in varying})
            runs.append(RunSpec(name, method_name, params, training, replicate))
    duplicates = [n for n, count in collections.Counter(r.name for r in runs).items() if count > 1]
    if duplicates:
        raise AlignlabError(f"config: the grid repeats runs ({', '.join(duplicates[:3])}); remove repeated values")
    return runs
