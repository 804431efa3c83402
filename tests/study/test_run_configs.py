"""One config path (issue 30 item 6): a method's hyper-parameters are converted once, on the way
from a study YAML to the loss, and every way of building a run's TrainConfig gives the same config
for the same inputs."""

import dataclasses
import json
import pickle

import pytest
import torch
import yaml

import alignlab.evaluation.evaluate
import alignlab.training
from alignlab.bench import runner as bench_runner
from alignlab.config import TrainConfig, build_config, dump_yaml
from alignlab.errors import AlignlabError
from alignlab.models.generate import GenerationConfig
from alignlab.objectives import hyperparameters
from alignlab.objectives.registry import PairBatch, get_method
from alignlab.study import executors, sweep, var_stages
from alignlab.study.config import Shared, StudyConfig, StudyInputs
from alignlab.study.store import RunStore

STUDY_YAML = """
methods: [dpo, simpo]
grid_preset: null
seeds: 2
grid:
  dpo: {beta: ["0.1", "0.5"]}
  simpo: {beta: ["2"], gamma: ["0.5", "1"]}
training: {learning_rate: "1e-4", epochs: 1, batch_size: "4", max_length: 64}
"""


def pair_batch() -> PairBatch:
    # Log-probs whose DPO margin is 0: every loss of beta β is then log 2 (simpo: softplus(γ)).
    zeros = torch.zeros(2, dtype=torch.float64)
    lengths = torch.tensor([3.0, 3.0], dtype=torch.float64)
    return PairBatch(zeros, lengths, zeros, lengths, zeros, zeros)


@pytest.fixture
def real_study(tmp_path):
    """A study on "real" inputs (the four paths), with the files that a sweep checks for."""
    inputs = {}
    for name in ("model", "train_data", "test_data", "gold_rm"):
        inputs[name] = tmp_path / "inputs" / name
        inputs[name].parent.mkdir(exist_ok=True)
        inputs[name].write_text("")
    path = tmp_path / "study.yaml"
    path.write_text(STUDY_YAML + "".join(f"{name}: {value}\n" for name, value in inputs.items()))
    return path, inputs


def run_study_without_training(monkeypatch, out, study_yaml, inputs, **overrides) -> list[TrainConfig]:
    """`alignlab sweep STUDY.yaml` through the real sweep, executor and run (run_sweep →
    execute_run → train), with training, evaluation and the report replaced by stand-ins; the
    stand-in trainer checks its config as train() does and computes the method's loss on a batch.
    Returns the configs the trainer was given."""
    trained = []

    def train(config):
        config.validate()  # train()'s first step
        trained.append(config)
        loss = get_method(config.method).batch_loss(pair_batch(), **config.params)
        assert loss.dtype == torch.float64

    def evaluate_model(model, pairs, scorer, out_dir, **settings):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps({"mean_score": {"value": 0.0}}))

    def shared(config, out, methods, base_training):
        study_inputs = StudyInputs(str(inputs["model"]), str(inputs["model"]), str(inputs["train_data"]), None,
                                   "pairs", None, [], None, {}, {})
        (out / "runs" / "sft").mkdir(parents=True, exist_ok=True)
        return Shared(study_inputs, {**base_training, "cache_dir": None}, GenerationConfig(), None, None)

    monkeypatch.setattr(alignlab.training, "train", train)
    monkeypatch.setattr(alignlab.evaluation.evaluate, "evaluate_model", evaluate_model)
    monkeypatch.setattr(sweep, "prepare_shared", shared)
    monkeypatch.setattr(sweep, "write_sweep_report", lambda out: None)
    for name in ("_scorer", "_pairs", "_sft_samples"):
        monkeypatch.setattr(executors, name, lambda *args: None)
    real_execute_run = executors.execute_run
    # As a worker process gets it: the task pickled.
    monkeypatch.setattr(executors, "execute_run", lambda task: real_execute_run(pickle.loads(pickle.dumps(task))))
    sweep.run_sweep(build_config(StudyConfig, str(study_yaml), {"out": str(out), **overrides}))
    return trained


def test_a_study_yaml_converts_each_hyperparameter_once_on_its_way_to_the_loss(monkeypatch, tmp_path, real_study):
    calls = []

    def counting(name, value, annotation, where):
        calls.append((name, value))
        return real_coerce(name, value, annotation, where)

    real_coerce = hyperparameters.coerce_value
    monkeypatch.setattr(hyperparameters, "coerce_value", counting)
    trained = run_study_without_training(monkeypatch, tmp_path / "sweep", *real_study)
    # 2 seeds × (dpo: 2 betas × 1 hyper-parameter + simpo: 2 gammas × 2 hyper-parameters) = 12 conversions,
    # one per hyper-parameter of each run; the strings of the YAML reach the loss as numbers.
    assert len(trained) == 2 * (2 + 2) and len(calls) == 2 * (2 * 1 + 2 * 2)
    assert sorted({(c.method, tuple(c.params.items())) for c in trained}) == [
        ("dpo", (("beta", 0.1),)), ("dpo", (("beta", 0.5),)),
        ("simpo", (("beta", 2.0), ("gamma", 0.5))), ("simpo", (("beta", 2.0), ("gamma", 1.0)))]
    assert all(type(value) is float for c in trained for value in c.params.values())
    # Replicates 0 and 1 of each configuration, each on a training seed of its own (study.grid).
    assert sorted(c.seed // 100_003 for c in trained) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({c.seed for c in trained}) == 8
    # What the run writes next to its results holds plain values.
    written = yaml.safe_load(dump_yaml(trained[0]))
    assert type(written["params"]) is dict and written["params"] == dict(trained[0].params)


def test_every_way_of_building_a_run_gives_the_same_config(monkeypatch, tmp_path, real_study):
    study_yaml, inputs = real_study
    trained = run_study_without_training(monkeypatch, tmp_path / "sweep", study_yaml, inputs)
    from_sweep = next(c for c in trained if c.method == "dpo" and c.params["beta"] == 0.5 and c.seed // 100_003 == 1)
    run_dir = tmp_path / "sweep" / "runs" / "dpo-beta0.5-lr0.0001-s1"
    assert from_sweep.out == str(run_dir)
    # The same run as `alignlab train` builds it from its command line's text.
    command_line = {"method": "dpo", "model": str(inputs["model"]), "data": str(inputs["train_data"]),
                    "out": str(run_dir), "beta": "0.5", "learning_rate": "0.0001", "epochs": "1", "batch_size": "4",
                    "max_length": "64", "seed": str(from_sweep.seed), "resume": "true", "overwrite": "true"}
    from_cli = build_config(TrainConfig, None, command_line)
    from_cli.validate()
    assert from_sweep == from_cli and dump_yaml(from_sweep) == dump_yaml(from_cli)

    # The VAR study's stages, on the sweep's shared settings.
    study_inputs = StudyInputs(str(inputs["model"]), str(inputs["model"]), str(inputs["train_data"]), None,
                               "pairs", None, [], None, {}, {})
    shared = Shared(study_inputs, {"learning_rate": 1e-4, "epochs": 1, "batch_size": 4, "max_length": 64},
                    GenerationConfig(), "proxy-rm", None)
    from_stage = var_stages._train_config(shared, "var", tmp_path / "stage", {"lam": "2"}, snapshot_steps=3)
    stage_cli = build_config(TrainConfig, None, {
        "method": "var", "model": str(inputs["model"]), "data": str(inputs["train_data"]),
        "out": str(tmp_path / "stage"), "lam": "2", "learning_rate": "1e-4", "epochs": "1", "batch_size": "4", "max_length": "64",
        "snapshot_steps": "3", "reward_model": "proxy-rm"})
    stage_cli.validate()
    assert from_stage == stage_cli and from_stage.params["lam"] == 2.0
    # dpo uses no rewards: the proxy reward model is not its reward_model.
    assert var_stages._train_config(shared, "dpo", tmp_path / "stage").reward_model is None

    # The benchmark's runs.
    setup = {"model": str(inputs["model"]), "data": str(inputs["train_data"]), "batch_size": 4, "max_length": 64}
    from_bench = bench_runner._train_config(setup, "dpo", tmp_path / "bench", tmp_path / "cache", "cpu")
    bench_cli = build_config(TrainConfig, None, {
        "method": "dpo", "model": setup["model"], "data": setup["data"], "out": str(tmp_path / "bench"),
        "beta": "0.1", "batch_size": "4", "learning_rate": "1e-4", "warmup_ratio": "0", "max_length": "64",
        "max_prompt_length": "32", "cache_dir": str(tmp_path / "cache"), "logging_steps": str(10**9)})
    bench_cli.validate()
    assert from_bench == bench_cli


def test_a_config_keeps_its_resolved_hyperparameters_through_copies_and_processes(monkeypatch):
    config = TrainConfig.for_run({"learning_rate": 1e-4}, "simpo", {"gamma": "0.25"}, model="m", data="d", out="o")
    calls = []
    monkeypatch.setattr(hyperparameters, "coerce_value", lambda *args: calls.append(args))
    for copy in (dataclasses.replace(config, resume=True), pickle.loads(pickle.dumps(config))):
        copy.validate()
        assert copy.params == {"beta": 2.0, "gamma": 0.25}
    assert calls == []  # nothing converted again
    with pytest.raises(TypeError):
        config.params["gamma"] = 1.0  # read-only: what the config holds is what was checked
    # Another method's hyper-parameters are resolved for the new method.
    monkeypatch.undo()
    switched = dataclasses.replace(config, method="dpo", params={"beta": "0.3"})
    switched.validate()
    assert switched.params == {"beta": 0.3}


def test_a_study_rerun_on_other_training_seeds_trains_them_and_reuses_no_run_of_the_first(monkeypatch, tmp_path,
                                                                                           real_study):
    first, other = tmp_path / "sweep", tmp_path / "other"
    def replicates(trained):  # what the run names say after "-s"; each configuration trains on its own seeds
        return {c.seed // 100_003 for c in trained}

    assert replicates(run_study_without_training(monkeypatch, first, *real_study)) == {0, 1}
    # In the same directory: refused, as any other configuration is; the finished runs are not taken for new ones.
    with pytest.raises(AlignlabError, match="holds a sweep with a different configuration"):
        run_study_without_training(monkeypatch, first, *real_study, training_seed="10")
    # Elsewhere: the same world (seed 0), new training seeds, runs of their own.
    trained = run_study_without_training(monkeypatch, other, *real_study, training_seed="10")
    assert replicates(trained) == {10, 11}
    assert yaml.safe_load((other / "sweep.yaml").read_text())["seed"] == 0
    with RunStore(first / "runs.sqlite", readonly=True) as a, RunStore(other / "runs.sqlite", readonly=True) as b:
        first_runs, other_runs = a.runs(), b.runs()
    assert len(first_runs) == len(other_runs) == 8
    assert not {r.run_id for r in first_runs} & {r.run_id for r in other_runs}
    assert all(r.name.endswith(("-s10", "-s11")) for r in other_runs)
