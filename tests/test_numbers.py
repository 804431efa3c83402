"""Accepted, but cannot be right (issue 13, classes 3 and 7).

Every numeric setting of every command is finite, in its range and whole where it counts something,
checked before any work: a bad one exits 2 with one line naming it, and writes nothing. A training
run stops at the first optimizer step whose loss or gradient norm is not finite, names that step,
promotes nothing to the run directory and keeps the last good checkpoint for --resume. Data too small
for one optimizer step, or whose every pair has chosen == rejected after truncation, is an error.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from alignlab.objectives import registry
from alignlab.checks import COUNT, FRACTION, POSITIVE, SEED, Range, check_number
from alignlab.cli import main
from alignlab.config import TrainConfig
from alignlab.errors import AlignlabError
from alignlab.models.tiny import build_tiny_classifier
from alignlab.training import train
from alignlab.training.outputs import partial_dir

from conftest import make_pairs

# ---------------------------------------------------------------- check_number


@pytest.mark.parametrize("value, allowed, needle", [
    (float("nan"), POSITIVE, "must be a finite number > 0, got nan"),
    (float("inf"), POSITIVE, "must be a finite number > 0, got inf"),
    (float("-inf"), Range(), "must be a finite number, got -inf"),
    (0.0, POSITIVE, "must be > 0, got 0.0"),
    (1.0, FRACTION, "must be in (0, 1), got 1.0"),
    (0, COUNT, "must be >= 1, got 0"),
    (2.5, COUNT, "must be an integer >= 1, got 2.5"),
    (True, COUNT, "must be an integer >= 1, got True"),
    ("3", COUNT, "must be an integer >= 1, got '3'"),
    (-1, SEED, "must be in [0, 4294967295], got -1"),
    (2**32, SEED, "must be in [0, 4294967295]"),
])
def test_check_number_says_what_is_wrong(value, allowed, needle):
    with pytest.raises(AlignlabError) as err:
        check_number("here", "'x'", value, allowed)
    assert str(err.value).startswith("here: 'x' ") and needle in str(err.value)


@pytest.mark.parametrize("value, allowed", [(1e-300, POSITIVE), (0.5, FRACTION), (1, COUNT), (3.0, COUNT),
                                            (0, SEED), (2**32 - 1, SEED), (-7.5, Range())])
def test_check_number_accepts_what_is_in_range(value, allowed):
    check_number("here", "'x'", value, allowed)


# ---------------------------------------------------------------- every command, before any work

@pytest.fixture(scope="module")
def gold_rm(tiny_model, tmp_path_factory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("gold") / "rm", tiny_model)


def train_args(method: str = "dpo"):
    return lambda t: ["train", "--method", method, "--model", t["model"], "--data", t["data"], "--out", t["out"],
                      "--max_length", "64", "--max_prompt_length", "32"]


def train_rm_args(t):
    return ["train-rm", "--model", t["model"], "--data", t["data"], "--out", t["out"], "--max_length", "64",
            "--max_prompt_length", "32"]


def eval_args(t):
    return ["eval", "--model", t["model"], "--data", t["data"], "--gold_rm", t["gold"], "--out", t["out"],
            "--max_new_tokens", "4", "--limit", "2"]


def run_args(t):
    return ["run", "--world", "tiny", "--out", t["out"]]


def sweep_args(yaml_text: str):
    def build(t):
        config = Path(t["inputs"]) / "sweep.yaml"
        config.write_text(yaml_text)
        return ["sweep", str(config), "--world", "tiny", "--out", t["out"]]
    return build


# (command line builder, extra arguments, what the one error line must say)
BAD_NUMBERS = {
    "train: learning rate nan": (train_args(), ["--learning_rate", "nan"], "'learning_rate' must be a finite number"),
    "train: learning rate inf": (train_args(), ["--learning_rate", "inf"], "'learning_rate' must be a finite number"),
    "train: learning rate absurd": (train_args(), ["--learning_rate", "1e30"], "'learning_rate' must be in (0, 1]"),
    "train: learning rate zero": (train_args(), ["--learning_rate", "0"], "'learning_rate' must be in (0, 1]"),
    "train: max_grad_norm inf": (train_args(), ["--max_grad_norm", "inf"], "'max_grad_norm' must be a finite number"),
    "train: weight decay negative": (train_args(), ["--weight_decay", "-0.1"], "'weight_decay' must be >= 0"),
    "train: warmup ratio nan": (train_args(), ["--warmup_ratio", "nan"], "'warmup_ratio' must be a finite number"),
    "train: zero epochs": (train_args(), ["--epochs", "0"], "'epochs' must be > 0"),
    "train: negative batch size": (train_args(), ["--batch_size", "-4"], "'batch_size' must be >= 1"),
    "train: zero accumulation": (train_args(), ["--gradient_accumulation_steps", "0"],
                                 "'gradient_accumulation_steps' must be >= 1"),
    "train: negative seed": (train_args(), ["--seed", "-1"], "'seed' must be in [0, 4294967295]"),
    "train: negative max_steps": (train_args(), ["--max_steps", "-2"], "'max_steps' must be"),
    "train: negative checkpoint_steps": (train_args(), ["--checkpoint_steps", "-2"], "'checkpoint_steps' must be >= 0"),
    "train: dpo beta nan": (train_args(), ["--beta", "nan"], "'beta' must be a finite number > 0"),
    "train: dpo beta inf": (train_args(), ["--beta", "inf"], "'beta' must be a finite number > 0"),
    "train: ln-dpo beta zero": (train_args("ln-dpo"), ["--beta", "0"], "'beta' must be > 0"),
    "train: simpo gamma nan": (train_args("simpo"), ["--gamma", "nan"], "'gamma' must be a finite number"),
    "train: var lam zero": (train_args("var"), ["--lam", "0"], "'lam' must be > 0"),
    "train: var z_samples zero": (train_args("var"), ["--z_samples", "0"], "'z_samples' must be >= 1"),
    "train: grpo group of one": (train_args("grpo"), ["--group_size", "1"], "'group_size' must be >= 2"),
    "train: grpo clip of one": (train_args("grpo"), ["--clip_eps", "1"], "'clip_eps' must be in (0, 1)"),
    "train: grpo temperature inf": (train_args("grpo"), ["--temperature", "inf"], "'temperature' must be a finite"),
    "train-rm: eval fraction nan": (train_rm_args, ["--eval_fraction", "nan"], "'eval_fraction' must be a finite"),
    "train-rm: learning rate inf": (train_rm_args, ["--learning_rate", "inf"], "'learning_rate' must be a finite"),
    "train-rm: zero batch size": (train_rm_args, ["--batch_size", "0"], "'batch_size' must be >= 1"),
    "eval: zero limit": (eval_args, ["--limit", "0"], "--limit must be >= 1, got 0"),
    "eval: negative limit": (eval_args, ["--limit", "-3"], "--limit must be >= 1, got -3"),
    "eval: temperature nan": (eval_args, ["--temperature", "nan"], "--temperature must be a finite number > 0"),
    "eval: temperature zero": (eval_args, ["--temperature", "0"], "--temperature must be > 0"),
    "eval: top-p nan": (eval_args, ["--top_p", "nan"], "--top_p must be a finite number in (0, 1]"),
    "eval: top-p zero": (eval_args, ["--top_p", "0"], "--top_p must be in (0, 1]"),
    "eval: zero new tokens": (eval_args, ["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    "eval: zero batch size": (eval_args, ["--batch_size", "0"], "--batch_size must be >= 1"),
    "eval: negative seed": (eval_args, ["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    "eval: judge timeout inf": (eval_args, ["--judge_url", "http://127.0.0.1:9/v1", "--judge_model", "m",
                                            "--judge_timeout", "inf"], "--judge_timeout must be a finite number > 0"),
    "eval: judge workers zero": (eval_args, ["--judge_url", "http://127.0.0.1:9/v1", "--judge_model", "m",
                                             "--judge_workers", "0"], "--judge_workers must be >= 1"),
    "run: zero workers": (run_args, ["--workers", "0"], "'workers' must be >= 1"),
    "run: negative seed": (run_args, ["--seed", "-5"], "'seed' must be in [0, 4294967295]"),
    "run: zero race snapshots": (run_args, ["--study", "var", "--race_snapshots", "0"], "'race_snapshots' must be >= 1"),
    "run: zero test limit": (run_args, ["--test_limit", "0"], "'test_limit' must be >= 1"),
    "run: zero seeds": (run_args, ["--seeds", "0"], "'seeds' must be >= 1"),
    "run: last training seed out of range": (run_args, ["--seed", "4294967295", "--seeds", "2"],
                                             "the last training seed) must be in [0, 4294967295]"),
    "sweep: seeds as a list": (sweep_args("methods: [dpo]\nseeds: [0, 1]\n"), [], "'seeds'"),
    "sweep: training learning rate above 1": (sweep_args("methods: [dpo]\ntraining: {learning_rate: 5.0}\n"), [],
                                              "config: training: 'learning_rate' must be in (0, 1], got 5.0"),
    "sweep: a YAML .nan, refused where it is read": (sweep_args("methods: [dpo]\ntraining: {learning_rate: .nan}\n"),
                                                     [], "sweep.yaml:2: '.nan' is not a finite number"),
    "sweep: reward training fraction one": (sweep_args("methods: [var]\nreward_training: {eval_fraction: 1}\n"), [],
                                            "config: reward_training: 'eval_fraction' must be in (0, 1)"),
    "sweep: generation temperature negative": (sweep_args("methods: [dpo]\ngeneration: {temperature: -1}\n"), [],
                                          "config: generation: 'temperature' must be > 0, got -1.0"),
    "sweep: generation top_p zero": (sweep_args("methods: [dpo]\ngeneration: {top_p: 0}\n"), [],
                                     "config: generation: 'top_p' must be in (0, 1]"),
    "sweep: grid beta negative": (sweep_args("methods: [dpo]\ngrid:\n  dpo: {beta: [0.1, -0.5]}\n"), [],
                                  "hyper-parameter 'beta' must be > 0, got -0.5"),
}


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("name", list(BAD_NUMBERS))
def test_a_bad_number_exits_2_with_one_line_naming_it_and_writes_nothing(name, tiny_model, pairs_file, gold_rm,
                                                                         tmp_path, capsys):
    build, extra, needle = BAD_NUMBERS[name]
    (tmp_path / "inputs").mkdir()
    outputs = tmp_path / "out"
    outputs.mkdir()
    argv = build({"model": str(tiny_model), "data": str(pairs_file), "gold": str(gold_rm),
                  "out": str(outputs / "result"), "inputs": str(tmp_path / "inputs")}) + extra
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("alignlab: error: "), err
    assert needle in lines[0], (needle, lines[0])
    assert listing(outputs) == [], "an output was left behind"


def test_the_table_covers_every_command():
    assert {name.split(":")[0] for name in BAD_NUMBERS} == {"train", "train-rm", "eval", "run", "sweep"}


# ---------------------------------------------------------------- non-finite loss or gradient

def config_for(model, data, out, **overrides) -> TrainConfig:
    settings = dict(method="dpo", model=str(model), data=str(data), out=str(out), learning_rate=5e-3,
                    batch_size=4, epochs=1, warmup_ratio=0.0, lr_scheduler="constant", max_length=64,
                    max_prompt_length=32)
    return TrainConfig(**{**settings, **overrides})


def poison_dpo(monkeypatch, at_call: int, poison):
    """DPO whose `at_call`-th micro-batch loss goes through `poison(loss, batch)`; the others are DPO's."""
    method = registry.METHODS["dpo"]
    calls = {"n": 0}

    def batch_loss(b, **params):
        calls["n"] += 1
        loss = method.batch_loss(b, **params)
        return poison(loss, b) if calls["n"] == at_call else loss

    monkeypatch.setitem(registry.METHODS, "dpo", dataclasses.replace(method, batch_loss=batch_loss))


def test_a_nan_loss_stops_the_run_naming_its_step_and_keeps_the_last_checkpoint(tiny_model, pairs_file, tmp_path,
                                                                               monkeypatch, capsys):
    out = tmp_path / "run"
    poison_dpo(monkeypatch, 3, lambda loss, b: loss * float("nan"))
    # 16 pairs in micro-batches of 4: optimizer step 3 is the third call; a checkpoint is saved at step 2.
    argv = ["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file), "--out", str(out),
            "--batch_size", "4", "--max_length", "64", "--max_prompt_length", "32", "--learning_rate", "5e-3",
            "--checkpoint_steps", "2", "--logging_steps", "1"]
    code = main(argv)
    err = capsys.readouterr().err
    # On a line of its own, below the progress bar (split on newlines only: the bar redraws with \r).
    lines = [line for line in err.split("\n") if "alignlab" in line]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("alignlab: error: "), err
    assert "step 3: the loss is nan" in lines[0] and "learning_rate 0.005" in lines[0], lines
    assert "nothing from this run was saved" in lines[0] and "checkpoint" in lines[0]
    assert not out.exists(), "a run that hit a NaN loss must not be promoted to its run directory"
    partial = partial_dir(out)
    assert (partial / "checkpoint-2").is_dir() and not (partial / "model").exists()
    assert str(partial / "checkpoint-2") in lines[0]
    logged = [json.loads(line)["step"] for line in (partial / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2], "nothing of step 3 is logged"

    monkeypatch.undo()  # the objective is sound again: --resume continues from the step-2 checkpoint
    assert main([*argv, "--resume"]) == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4] and all(math.isfinite(m["loss"]) for m in logged)
    assert (out / "model" / "model.safetensors").exists()


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_run(tiny_model, pairs_file, tmp_path, monkeypatch):
    # sqrt'(0) is infinite: this term adds 0 to the loss and NaN to every gradient of the policy.
    poison_dpo(monkeypatch, 2, lambda loss, b: loss + (b.chosen_logps * 0).abs().sqrt().sum())
    out = tmp_path / "run"
    with pytest.raises(AlignlabError, match=r"step 2: the gradient norm is nan.*no checkpoint had been saved"):
        train(config_for(tiny_model, pairs_file, out))
    assert not out.exists() and not (partial_dir(out) / "model").exists()


def test_a_nan_in_an_accumulated_micro_batch_stops_its_optimizer_step(tiny_model, pairs_file, tmp_path, monkeypatch):
    # Two micro-batches per optimizer step: the 3rd micro-batch belongs to step 2.
    poison_dpo(monkeypatch, 3, lambda loss, b: loss * float("inf"))
    with pytest.raises(AlignlabError, match=r"step 2: the loss is (inf|nan)"):
        train(config_for(tiny_model, pairs_file, tmp_path / "run", batch_size=2, gradient_accumulation_steps=2))


# ---------------------------------------------------------------- data that cannot train

def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


@pytest.mark.parametrize("settings, pairs, needle", [
    ({"batch_size": 4}, 3, "3 usable pairs, fewer than one optimizer step takes: batch_size 4 × "
                           "gradient_accumulation_steps 1 × 1 processes = 4"),
    ({"batch_size": 4, "gradient_accumulation_steps": 4}, 12, "12 usable pairs, fewer than one optimizer step takes: "
                                                              "batch_size 4 × gradient_accumulation_steps 4"),
])
def test_data_too_small_for_one_optimizer_step_is_an_error(tiny_model, tmp_path, settings, pairs, needle):
    data = write_pairs(tmp_path / "few.jsonl", make_pairs(pairs))
    out = tmp_path / "run"
    with pytest.raises(AlignlabError) as err:
        train(config_for(tiny_model, data, out, **settings))
    assert str(err.value).startswith(f"{data}: ") and needle in str(err.value)
    assert "lower batch_size" in str(err.value)
    assert not out.exists() and not partial_dir(out).exists()


def test_reward_model_data_too_small_once_the_heldout_pairs_are_set_aside(tiny_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "rm"
    # 16 pairs, 2 held out (eval_fraction 0.1): 14 left for micro-batches of 16.
    code = main(["train-rm", "--model", str(tiny_model), "--data", str(pairs_file), "--out", str(out),
                 "--batch_size", "16", "--max_length", "64", "--max_prompt_length", "32"])
    err = capsys.readouterr().err
    assert code == 2 and f"{pairs_file}: 14 pairs to train on" in err and "= 16" in err, err
    assert not out.exists() and not partial_dir(out).exists()


def test_grpo_prompts_too_few_for_one_optimizer_step(tiny_model, tmp_path):
    rm = build_tiny_classifier(tmp_path / "rm", tiny_model)
    data = write_pairs(tmp_path / "few.jsonl", make_pairs(3))
    with pytest.raises(AlignlabError, match=r"3 distinct prompts, fewer than one optimizer step takes"):
        train(config_for(tiny_model, data, tmp_path / "run", method="grpo", reward_model=str(rm), max_length=64,
                         max_prompt_length=32, params={"group_size": 2, "max_new_tokens": 8}))


def shared_opening_pairs(n: int) -> list[dict]:
    """Pairs whose responses differ only after a long shared opening: cut to max_length they are equal."""
    opening = " ".join(["the sky is blue and the leaf is green"] * 12)
    return [{"id": f"p{i}", "prompt": f"Describe thing {i}.", "chosen": f"{opening} so yes.",
             "rejected": f"{opening} so no."} for i in range(8)]


@pytest.mark.parametrize("command", ["train", "train-rm"])
def test_every_pair_equal_after_truncation_is_an_error(command, tiny_model, tmp_path, capsys):
    data = write_pairs(tmp_path / "same.jsonl", shared_opening_pairs(8))
    out = tmp_path / "run"
    method = ["--method", "dpo"] if command == "train" else []
    code = main([command, *method, "--model", str(tiny_model), "--data", str(data), "--out", str(out),
                 "--batch_size", "2", "--max_length", "48", "--max_prompt_length", "16"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{data}: in all " in err and "same tokens as the rejected one after truncation to max_length 48" in err
    assert "raise max_length" in err
    assert not out.exists() and not partial_dir(out).exists()


def test_sft_trains_on_them_all_the_same(tiny_model, tmp_path):
    data = write_pairs(tmp_path / "same.jsonl", shared_opening_pairs(8))
    result = train(config_for(tiny_model, data, tmp_path / "run", method="sft", batch_size=2, max_length=48,
                              max_prompt_length=16, max_steps=1))
    assert result.optimizer_steps == 1 and math.isfinite(result.final_loss)
