"""Experiment tracking (`report_to`) through accelerate's trackers, and the extra metrics a method's
diagnostics add to metrics.jsonl (VAR's weight_entropy)."""

import json
import math
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import accelerate.utils
from accelerate.tracking import TensorBoardTracker

from alignlab.cli import main
from alignlab.config import RewardModelConfig
from alignlab.errors import AlignlabError
from alignlab.models.tiny import build_tiny_classifier
from alignlab.training import loop, tracking, train, train_reward_model

from conftest import config_for, train_until_killed


def metrics_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def logged_like_metrics_jsonl(out) -> list[str]:
    """Assert every number of every metrics.jsonl line is the tensorboard scalar of its name at its
    step (to float32's precision: tensorboard stores float32); return the names."""
    lines = metrics_lines(out)
    accumulator = EventAccumulator(str(out / "tracking" / out.name))
    accumulator.Reload()
    names = [k for k in lines[0] if k != "step"]
    for name in names:
        logged = accumulator.Scalars(name)
        assert [e.step for e in logged] == [line["step"] for line in lines], name
        assert [e.value for e in logged] == pytest.approx([line[name] for line in lines], rel=1e-6, abs=1e-7), name
    return names


def test_tensorboard_logs_every_logged_step_as_metrics_jsonl_does(tiny_model, pairs_file, tmp_path, monkeypatch):
    events = []
    real_finish, real_replace = TensorBoardTracker.finish, os.replace
    monkeypatch.setattr(TensorBoardTracker, "finish", lambda self: events.append("writer closed") or real_finish(self))

    def replace(source, target):  # the os module's own: atomic writes call it too
        if str(source).endswith(".partial"):
            events.append("run renamed")
        real_replace(source, target)

    monkeypatch.setattr(loop.os, "replace", replace)
    out = tmp_path / "run"
    # 16 pairs in batches of 4: 4 optimizer steps; a linear schedule so the learning rate changes per step.
    train(config_for(tiny_model, pairs_file, out, report_to="tensorboard", lr_scheduler="linear",
                     params={"beta": 0.2}))

    assert events == ["writer closed", "run renamed"]  # no open file is carried by the rename
    assert not (tmp_path / ".run.partial").exists()
    lines = metrics_lines(out)
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert {"loss", "margin", "learning_rate", "grad_norm"} <= set(logged_like_metrics_jsonl(out))
    assert len({line["learning_rate"] for line in lines}) == 4  # the comparison is of changing values


def test_grpo_and_the_reward_model_trainer_log_to_tensorboard_too(tiny_model, pairs_file, tmp_path):
    rm = build_tiny_classifier(tmp_path / "proxy", tiny_model, seed=3)
    train(config_for(tiny_model, pairs_file, tmp_path / "grpo", method="grpo", reward_model=str(rm), max_steps=2,
                     params={"group_size": 2, "max_new_tokens": 4}, report_to="tensorboard"))
    assert {"loss", "margin", "reward", "kl", "clip_fraction", "response_length", "learning_rate",
            "grad_norm"} <= set(logged_like_metrics_jsonl(tmp_path / "grpo"))
    train_reward_model(RewardModelConfig(model=str(tiny_model), data=str(pairs_file), out=str(tmp_path / "rm"),
                                         batch_size=4, max_steps=2, max_length=64, max_prompt_length=32,
                                         report_to="tensorboard"))
    assert {"loss", "margin", "learning_rate", "grad_norm"} <= set(logged_like_metrics_jsonl(tmp_path / "rm"))


def test_run_name_names_the_tensorboard_folder(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "run"
    train(config_for(tiny_model, pairs_file, out, report_to="tensorboard", run_name="dpo-try-1", max_steps=1))
    assert [p.name for p in (out / "tracking").iterdir()] == ["dpo-try-1"]
    assert list((out / "tracking" / "dpo-try-1").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("tracker, finder", [("wandb", "is_wandb_available"), ("mlflow", "is_mlflow_available"),
                                             ("tensorboard", "is_tensorboard_available")])
def test_a_tracker_without_its_package_is_refused_before_any_run_directory(tiny_model, pairs_file, tmp_path,
                                                                             monkeypatch, tracker, finder):
    # accelerate itself drops a tracker it cannot find without a word: the run would track nothing.
    monkeypatch.setattr(accelerate.utils, finder, lambda: False)
    with pytest.raises(AlignlabError) as err:
        train(config_for(tiny_model, pairs_file, tmp_path / "run", report_to=tracker))
    assert f"pip install 'alignlab[{tracker}]'" in str(err.value) and "report_to" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the run, nor its partial directory, nor its lock


def test_the_cli_refuses_a_missing_tracker(tiny_model, pairs_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    code = main(["train", "--model", str(tiny_model), "--data", str(pairs_file), "--out", str(tmp_path / "run"),
                 "--report_to", "wandb"])
    assert code != 0 and "pip install 'alignlab[wandb]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "..", "two\nlines"])
def test_a_run_name_that_is_a_path_is_refused(tiny_model, pairs_file, tmp_path, name):
    with pytest.raises(AlignlabError, match="run_name"):
        config_for(tiny_model, pairs_file, tmp_path / "run", run_name=name).validate()


def test_tracker_config_is_flat_names_of_scalars(tiny_model, pairs_file, tmp_path):
    config = config_for(tiny_model, pairs_file, tmp_path / "run", method="var", lora_target_modules=["q_proj", "v_proj"],
                        params={"lam": 0.5})
    config.validate()
    flat = tracking.tracker_config(config)
    assert flat["params.lam"] == 0.5 and flat["params.z_estimator"] == "batch"
    assert flat["params.length_normalize"] is True and flat["params.z_samples"] == 8
    assert flat["lora_target_modules"] == "q_proj,v_proj"
    assert flat["learning_rate"] == 5e-3 and flat["reward_model"] is None and "params" not in flat
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_var_logs_its_weight_entropy_and_dpo_does_not(tiny_model, pairs_file, tmp_path):
    train(config_for(tiny_model, pairs_file, tmp_path / "var", method="var", report_to="tensorboard"))
    train(config_for(tiny_model, pairs_file, tmp_path / "dpo"))
    var_lines = metrics_lines(tmp_path / "var")
    # A micro-batch of 4 pairs weighs 8 responses: 0 < H ≤ log 8 (log 8 only for equal weights).
    assert all(0 < line["weight_entropy"] < math.log(8) for line in var_lines)
    assert all("weight_entropy" not in line for line in metrics_lines(tmp_path / "dpo"))
    assert "weight_entropy" in logged_like_metrics_jsonl(tmp_path / "var")


def test_a_resumed_run_logs_each_step_once(tiny_model, pairs_file, tmp_path, monkeypatch):
    settings = dict(batch_size=2, checkpoint_steps=3, report_to="tensorboard")  # 8 steps, checkpoints at 3 and 6
    out = tmp_path / "run"
    # Killed in step 8: steps 1-7 logged, the last checkpoint at step 6.
    train_until_killed(config_for(tiny_model, pairs_file, out, **settings), monkeypatch, 8)
    train(config_for(tiny_model, pairs_file, out, resume=True, **settings))

    lines = metrics_lines(out)
    accumulator = EventAccumulator(str(out / "tracking" / "run"))
    accumulator.Reload()
    logged = accumulator.Scalars("loss")
    assert [e.step for e in logged] == [line["step"] for line in lines] == list(range(1, 9))
    assert [e.value for e in logged] == pytest.approx([line["loss"] for line in lines], rel=1e-6)
