"""The grid of a sweep: preset expansion, grid entries over presets, seeds, and bad grids."""

import json
import math

import pytest

from alignlab.analysis import RunRecord, group_configurations
from alignlab.errors import AlignlabError
from alignlab.study.config import StudyConfig
from alignlab.study.grid import GRID_PRESETS, expand_grid

BASE = {"learning_rate": 1e-3, "epochs": 1}


def test_hitchhiker_grid_has_every_combination_with_rates_scaled_from_the_base():
    runs = expand_grid(StudyConfig(out="x", grid_preset="hitchhiker"), BASE)
    by_method = {m: [r for r in runs if r.method == m] for m in ("dpo", "ln-dpo", "simpo")}
    # 3 replicate seeds (the default) of every configuration.
    assert [len(v) for v in by_method.values()] == [5 * 3 * 3, 5 * 3 * 3, 3 * 3 * 3 * 3]
    assert sorted({r.replicate for r in runs}) == [0, 1, 2]
    # Each configuration trains on seeds of its own: no two runs of the sweep share a training seed.
    assert len({r.training["seed"] for r in runs}) == len(runs)
    assert sorted({r.training["learning_rate"] for r in runs}) == [5e-4, 1e-3, 2e-3]
    assert len({r.name for r in runs}) == len(runs)
    simpo = by_method["simpo"][0]
    assert simpo.name == "simpo-beta1-gamma0.5-lr0.0005-s0" and simpo.params == {"beta": 1.0, "gamma": 0.5}


def test_grid_entries_override_the_preset_and_seeds_multiply_runs():
    config = StudyConfig(out="x", grid_preset="var", grid={"var": {"lam": [1.0]}, "all": {"epochs": [1, 2]}},
                         seeds=2)
    runs = expand_grid(config, BASE)
    var = [r for r in runs if r.method == "var"]
    assert len(var) == 1 * 3 * 2 * 2 and {r.params["lam"] for r in var} == {1.0}
    assert {r.params["z_estimator"] for r in var} == {"batch"}  # defaults are filled in
    assert "var-lr0.001-ep2-s1" in {r.name for r in var}


@pytest.mark.parametrize("grid, expected", [
    ({"dpo": {"betta": [0.1]}}, "did you mean 'beta'"),
    ({"simpo": {"beta": [1.0]}}, "grid names method 'simpo'"),
    ({"dpo": {"beta": 0.1}}, "grid.dpo.beta must be a non-empty list"),
    ({"dpo": {"beta": [-1.0]}}, "beta"),
])
def test_bad_grids_fail_with_the_key_at_fault(grid, expected):
    with pytest.raises(AlignlabError, match=expected):
        expand_grid(StudyConfig(out="x", grid_preset=None, methods=["dpo"], grid=grid), BASE)


def test_presets_name_only_registered_methods_and_parameters():
    """Each preset expands (its methods and parameters are registered) into one run per combination
    of its values and learning-rate scales, for the one seed."""
    for name, preset in GRID_PRESETS.items():
        runs = expand_grid(StudyConfig(out="x", grid_preset=name, seeds=1), BASE)
        assert [*dict.fromkeys(r.method for r in runs)] == preset["methods"], name
        for method in preset["methods"]:
            combinations = math.prod(len(values) for values in preset["grid"].get(method, {}).values())
            expected = combinations * len(preset["learning_rate_scales"])
            assert sum(r.method == method for r in runs) == expected, (name, method)


@pytest.mark.parametrize("config", [StudyConfig(out="x", grid_preset="hitchhiker"),
                                    StudyConfig(out="x", grid_preset="var", grid={"all": {"epochs": [1, 2]}})])
def test_configurations_are_named_as_the_sweep_names_their_runs_less_the_seed(config):
    # The report groups the records of the store (name, method, parameters) by their parameters and
    # names each configuration from them; a sweep's run is "<configuration>-s<seed>".
    runs = expand_grid(config, BASE)
    records = [RunRecord(run.name, run.method, json.loads(json.dumps(run.all_params))) for run in runs]
    named = {run.name: config.name for configs in group_configurations(records).values()
             for config in configs for run in config.runs}
    assert named == {run.name: run.name.removesuffix(f"-s{run.replicate}") for run in runs}
    assert len(set(named.values())) == len(runs) // 3  # three seeds of each configuration


def test_training_seeds_start_at_training_seed_and_the_world_keeps_its_seed():
    grid = {"dpo": {"beta": [0.1]}}
    # Without training_seed the replicates start at the world's seed, as before the two were separate.
    same = expand_grid(StudyConfig(out="x", grid_preset=None, methods=["dpo"], grid=grid, seed=5, seeds=3), BASE)
    assert [r.replicate for r in same] == [5, 6, 7]
    config = StudyConfig(out="x", grid_preset=None, methods=["dpo"], grid=grid, seed=5, training_seed=10, seeds=2)
    config.validate()
    runs = expand_grid(config, BASE)
    assert [r.replicate for r in runs] == [10, 11] and config.seed == 5
    assert [r.name for r in runs] == ["dpo-lr0.001-s10", "dpo-lr0.001-s11"]
    # The seed it trains with: the configuration's own, 100,003 apart per replicate, in replicate order.
    seeds = [r.training["seed"] for r in runs]
    assert seeds[1] - seeds[0] == 100_003 and seeds[0] // 100_003 == 10


def test_configurations_share_no_training_seed_and_keep_them_across_grids():
    small = expand_grid(StudyConfig(out="x", grid_preset=None, methods=["dpo"], grid={"dpo": {"beta": [0.1, 0.5]}},
                                    seeds=3), BASE)
    by_config = {}
    for r in small:
        by_config.setdefault(r.name.rsplit("-s", 1)[0], []).append(r.training["seed"])
    assert len(by_config) == 2 and not set.intersection(*(set(v) for v in by_config.values()))
    assert all(v == sorted(v) for v in by_config.values())
    # A configuration's seeds follow from its run names alone: a grid that adds a value to an axis that
    # already varies keeps the other runs' names, and so their seeds, and a widened sweep reuses them.
    wider = expand_grid(StudyConfig(out="x", grid_preset=None, methods=["dpo"],
                                    grid={"dpo": {"beta": [0.1, 0.5, 0.3]}}, seeds=3), BASE)
    assert {r.name: r.training["seed"] for r in small}.items() <= {r.name: r.training["seed"] for r in wider}.items()


@pytest.mark.parametrize("settings, expected", [
    ({"training_seed": -1}, "'training_seed' must be in [0, 4294967295], got -1"),
    ({"training_seed": 2**32 - 2, "seeds": 3}, "'training_seed' + 'seeds' − 1 (the last training seed)"),
    ({"seed": 2**32 - 2, "seeds": 3}, "'seed' (the first training seed) + 'seeds' − 1"),
])
def test_training_seeds_out_of_range_are_refused_naming_the_setting(settings, expected):
    with pytest.raises(AlignlabError) as err:
        StudyConfig(out="x", **settings).validate()
    assert expected in str(err.value)
