"""A TRL user's configuration works unchanged (issue 30): every key of `trl dpo` is classified
(alignlab.trl_keys), honoured, converted, ignored where that is harmless, or refused with what
alignlab does instead, every refusal in one error (`--ignore_unsupported`: one warning)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab import trl_keys
from alignlab.cli import main
from alignlab.config import RewardModelConfig, TrainConfig, build_config, dump_yaml, field_types, parse_overrides
from alignlab.errors import AlignlabError
from alignlab.trl_settings import CONVERTERS, PRECISION_FLAGS, TRL_ALIASES, close_name

trl = pytest.importorskip("trl")


def write_yaml(path, values: dict):
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return str(path)


def trl_field_names() -> set[str]:
    from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments

    return {f.name for cls in (DPOConfig, ModelConfig, ScriptArguments, DatasetMixtureConfig)
            for f in dataclasses.fields(cls)}


def test_every_key_of_trl_dpo_is_classified_once():
    """A key a new TRL adds fails here until it is classified in trl_keys.TRL_KEYS."""
    names = trl_field_names()
    assert not sorted(name for name in names if trl_keys.classify(name) is None)
    from trl.scripts.dpo import make_parser

    flags = {option[2:] for action in make_parser()._actions for option in action.option_strings
             if option.startswith("--") and "-" not in option[2:]} - {"help"}
    assert len(flags) >= 177 and not sorted(flag for flag in flags if trl_keys.classify(flag) is None)
    fields = field_types(TrainConfig)
    for key, entry in trl_keys.TRL_KEYS.items():
        assert entry.kind in (trl_keys.ALIAS, trl_keys.CONVERT, trl_keys.IGNORED, trl_keys.REFUSED), key
        if entry.kind == trl_keys.ALIAS:
            assert entry.target in fields, key
        elif entry.kind == trl_keys.CONVERT:  # each conversion is written out in alignlab.config
            assert key in CONVERTERS or key in PRECISION_FLAGS or key in trl_keys.METHOD_KEYS, key
        else:  # a field of ours under the same name would shadow it
            assert key not in fields and entry.note, key


def test_readme_names_every_classified_key():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Coming from TRL"):readme.index("\n## ", readme.index("## Coming from TRL"))]
    assert not [key for key in trl_keys.TRL_KEYS if f"`{key}`" not in section]


def test_trl_defaults_dumped_whole_are_accepted(tmp_path):
    """DPOConfig().to_dict() with ModelConfig and ScriptArguments: every key, TRL's defaults, no refusal."""
    from trl import DPOConfig, ModelConfig, ScriptArguments

    values = DPOConfig(output_dir=str(tmp_path / "out"), bf16=False).to_dict()  # bf16 needs a GPU to construct
    values.update(dataclasses.asdict(ModelConfig(model_name_or_path="m")))
    values.update(dataclasses.asdict(ScriptArguments(dataset_name="d")))
    config = build_config(TrainConfig, write_yaml(tmp_path / "dump.yaml", values), {})
    assert (config.method, config.params, config.max_steps, config.report_to) == ("dpo", {"beta": 0.1}, 0, "none")
    assert (config.epochs, config.max_length, config.max_prompt_length, config.seed) == (3, 1024, 512, 42)
    assert (config.gradient_checkpointing, config.checkpoint_steps, config.eval_split) == (True, 500, "test")


def test_trl_example_yaml_gives_the_expected_config(tiny_model, pairs_file, tmp_path):
    """The keys of TRL's DPO script (trl/scripts/dpo.py) and its docs, as a DPOConfig YAML."""
    path = write_yaml(tmp_path / "dpo.yaml", {
        "model_name_or_path": str(tiny_model), "model_revision": "main", "dataset_name": str(pairs_file),
        "dataset_train_split": "train", "dataset_test_split": "test", "learning_rate": 5.0e-7,
        "num_train_epochs": 1, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 4,
        "max_steps": -1, "gradient_accumulation_steps": 8, "gradient_checkpointing": True, "logging_steps": 25,
        "eval_strategy": "steps", "eval_steps": 50, "output_dir": str(tmp_path / "out"),
        "remove_unused_columns": False, "use_peft": True, "lora_r": 32, "lora_alpha": 16,
        "lora_target_modules": ["q_proj", "v_proj"], "bf16": False, "report_to": ["tensorboard"], "max_length": 64,
        "beta": 0.1, "loss_type": "sigmoid", "warmup_steps": 10, "save_strategy": "steps", "save_steps": 100,
        "save_total_limit": 2, "seed": 42, "lr_scheduler_type": "cosine", "optim": "adamw_torch",
        "adam_beta2": 0.98, "dtype": "float32", "precompute_ref_log_probs": True, "logging_first_step": True,
        "push_to_hub": False, "hub_model_id": "someone/model", "dataloader_num_workers": 4,
        "ddp_find_unused_parameters": False, "use_rslora": True, "lora_modules_to_save": ["lm_head"]})
    config = build_config(TrainConfig, path, {})
    expected = {"model": str(tiny_model), "revision": "main", "data": str(pairs_file), "data_split": "train",
                "eval_split": "test", "learning_rate": 5e-7, "epochs": 1, "batch_size": 2, "eval_batch_size": 4,
                "max_steps": 0, "gradient_accumulation_steps": 8, "gradient_checkpointing": True,
                "logging_steps": 25, "eval_strategy": "steps", "eval_steps": 50, "out": str(tmp_path / "out"),
                "use_peft": True, "lora_r": 32, "lora_alpha": 16, "lora_target_modules": ["q_proj", "v_proj"],
                "mixed_precision": "no", "report_to": "tensorboard", "max_length": 64, "max_prompt_length": 32,
                "method": "dpo", "warmup_steps": 10, "warmup_ratio": 0.1, "save_strategy": "steps",
                "checkpoint_steps": 100, "save_total_limit": 2, "seed": 42, "lr_scheduler": "cosine",
                "optim": "adamw_torch", "adam_beta2": 0.98, "dtype": "float32", "use_rslora": True,
                "lora_modules_to_save": ["lm_head"]}
    assert {name: getattr(config, name) for name in expected} == expected
    config.validate()
    assert config.params == {"beta": 0.1}
    written = dump_yaml(config)
    assert not any(f"\n{key}:" in written for key in TRL_ALIASES) and "loss_type" not in written


def test_trl_example_command_line_works_unchanged(tiny_model, pairs_file, tmp_path, monkeypatch):
    """`python trl/scripts/dpo.py ...` of TRL's docstring (LoRA), its flags given to `alignlab train`."""
    import alignlab.training as training

    seen = []
    monkeypatch.setattr(training, "train", lambda config: seen.append(config) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["train", "--dataset_name", str(pairs_file), "--model_name_or_path", str(tiny_model),
              "--learning_rate", "5.0e-6", "--num_train_epochs", "1", "--per_device_train_batch_size", "2",
              "--max_steps", "1000", "--gradient_accumulation_steps", "8", "--eval_strategy", "steps",
              "--eval_steps", "50", "--output_dir", str(tmp_path / "o"), "--no_remove_unused_columns", "--use_peft",
              "--lora_r", "32", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
              "--report_to", "none", "--max_length", "64", "--loss_type", "sigmoid", "--no_disable_dropout"])
    config = seen[0]
    assert (config.lora_target_modules, config.lora_r, config.max_steps, config.eval_steps) == (
        ["q_proj", "v_proj"], 32, 1000, 50)
    assert config.disable_dropout is False and config.method == "dpo" and config.max_prompt_length == 32


def test_max_length_alone_leaves_the_prompt_half():
    config = build_config(TrainConfig, None, parse_overrides(["--max_length", "64", "--model", "m", "--data", "d",
                                                              "--out", "o"]))
    config.validate()
    assert (config.max_length, config.max_prompt_length) == (64, 32)
    assert TrainConfig().max_prompt_length == 256 and RewardModelConfig(max_length=100).max_prompt_length == 50
    with pytest.raises(AlignlabError, match=r"'max_prompt_length' \(64\) must be smaller than 'max_length' \(64\)"):
        build_config(TrainConfig, None, {"model": "m", "data": "d", "out": "o", "max_length": "64",
                                         "max_prompt_length": "64"}).validate()


def test_unsupported_settings_are_reported_together_and_ignore_unsupported_warns(tmp_path, caplog):
    path = write_yaml(tmp_path / "big.yaml", {
        "push_to_hub": True, "deepspeed": "ds_config.json", "load_in_4bit": True, "optim": "adafactor",
        "save_strategy": "epoch", "use_liger_kernel": True, "fsdp": "", "torch_compile": False,
        "model_name_or_path": "m"})
    argv = ["--report_to", "tensorboard", "wandb", "--resume_from_checkpoint", "runs/x/checkpoint-5"]
    with pytest.raises(AlignlabError) as err:
        build_config(TrainConfig, path, parse_overrides(argv))
    first, *lines = str(err.value).splitlines()
    assert first == "config: 8 TRL settings that alignlab cannot honour (--ignore_unsupported trains without them):"
    assert len(lines) == 8 and all(line.startswith("  ") for line in lines)
    for needle in ("key 'push_to_hub': alignlab never uploads", "key 'deepspeed'", "key 'load_in_4bit'",
                   "optim 'adafactor'", "save_strategy epoch", "key 'use_liger_kernel'",
                   "command line: --report_to: report_to tensorboard wandb: alignlab logs to one tracker",
                   "command line: --resume_from_checkpoint"):
        assert sum(needle in line for line in lines) == 1, needle
    with caplog.at_level(logging.WARNING, logger="alignlab.config"):
        config = build_config(TrainConfig, path, parse_overrides([*argv, "--ignore_unsupported"]))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("ignore_unsupported: training without 8 TRL settings") and "push_to_hub" in warning
    assert (config.optim, config.save_strategy, config.report_to, config.resume) == (
        TrainConfig.optim, "steps", "none", False)
    assert config.ignore_unsupported is True and config.model == "m"


def test_unknown_keys_are_reported_together_with_hints_of_the_same_meaning_only(tmp_path):
    path = write_yaml(tmp_path / "typos.yaml", {"learning_rat": 1e-5, "hub_modelid": "x", "push_to_hub": True})
    with pytest.raises(AlignlabError) as err:
        build_config(TrainConfig, path, parse_overrides(["--warmup_step", "3", "--frobnicate"]))
    first, *lines = str(err.value).splitlines()
    assert first.startswith("config: 4 unknown keys and 1 TRL setting that alignlab cannot honour")
    text = str(err.value)
    assert "unknown key 'learning_rat'; did you mean 'learning_rate'?" in text
    assert "unknown key 'warmup_step'; did you mean 'warmup_steps'?" in text
    assert "unknown key 'hub_modelid'\n" in text and "'frobnicate'\n" in text  # no hint: nothing of ours is that close
    assert lines[-1].startswith("  Valid: ")
    # A hint never names a setting that is merely alike: TRL's names classified here mean something else.
    assert close_name("dataset_test_split", field_types(TrainConfig)) is None
    assert close_name("max_completion_length", ["max_prompt_length"]) is None
    assert close_name("ipo", ["dpo", "simpo"]) is None and close_name("dop", ["dpo", "simpo"]) == "dpo"
    with pytest.raises(AlignlabError, match=r"unknown method 'simpoo'; did you mean 'simpo'\?"):
        build_config(TrainConfig, None, {"method": "simpoo"})
    with pytest.raises(AlignlabError, match=r"unknown method 'sigmoid'; TRL's loss_type sigmoid is method 'dpo'"):
        build_config(TrainConfig, None, {"method": "sigmoid"})


def test_loss_type_picks_the_method():
    assert build_config(TrainConfig, None, {"loss_type": "ipo"}).method == "ipo"
    assert build_config(TrainConfig, None, {"method": "dpo", "loss_type": ["ipo"]}).method == "ipo"
    assert build_config(TrainConfig, None, {"method": "ipo", "loss_type": "ipo", "beta": "0.5"}).params == {"beta": "0.5"}
    with pytest.raises(AlignlabError, match=r"method 'simpo' .* and loss_type ipo .* ask for different objectives"):
        build_config(TrainConfig, None, {"method": "simpo", "loss_type": "ipo"})
    config = build_config(TrainConfig, None, parse_overrides(["--loss_type", "sigmoid", "sft", "--loss_weights", "1",
                                                              "0.5"]))
    assert config.method == "mix" and config.params["losses"] == "dpo,sft"
    assert [float(w) for w in config.params["loss_weights"].split(",")] == [1.0, 0.5]


def test_method_hyper_parameters_of_trl():
    assert build_config(TrainConfig, None, {"loss_type": "robust", "label_smoothing": "0.2"}).params == {
        "label_smoothing": "0.2"}
    # TRL's defaults ask for nothing of a method without them; another value is refused with the methods that take it.
    assert build_config(TrainConfig, None, {"label_smoothing": 0.0, "discopop_tau": 0.05}).params == {}
    with pytest.raises(AlignlabError, match=r"--label_smoothing: method dpo has no label_smoothing \(methods with one: robust"):
        build_config(TrainConfig, None, {"label_smoothing": "0.1"})
    assert build_config(TrainConfig, None, {"method": "sft", "beta": 0.1}).params == {}


def test_converted_values():
    def built(**values):
        return build_config(TrainConfig, None, values)

    assert (built(warmup_steps=0.05).warmup_ratio, built(warmup_steps=0.05).warmup_steps) == (0.05, 0)
    assert (built(warmup_steps="10").warmup_steps, built(warmup_steps="10").warmup_ratio) == (10, 0.1)
    for value in ("none", [], False, None, ["none"]):
        assert built(report_to=value).report_to == "none", value
    assert built(report_to="tensorboard").report_to == "tensorboard"
    assert built(resume_from_checkpoint=True).resume is True
    assert built(train_sampling_strategy="group_by_length").group_by_length is True
    assert built(activation_checkpointing=True, gradient_checkpointing=True).gradient_checkpointing is True
    assert built(bf16=True, fp16=False).mixed_precision == "bf16" and built(bf16=None).mixed_precision == "no"
    assert built(eval_steps=None, num_train_epochs=0.5).epochs == 0.5
    assert built(use_dora="true", use_rslora=True, lora_modules_to_save="lm_head,embed_tokens").lora_modules_to_save == [
        "lm_head", "embed_tokens"]
    for values in ({"report_to": "all"}, {"report_to": ["wandb", "mlflow"]}, {"report_to": "trackio"},
                   {"save_strategy": "best"}, {"optim": "sgd"}, {"train_sampling_strategy": "sequential"}):
        with pytest.raises(AlignlabError, match="cannot honour"):
            built(**values)
    with pytest.raises(AlignlabError, match="'activation_checkpointing' and 'gradient_checkpointing' both set"):
        built(activation_checkpointing=False, gradient_checkpointing=True)


def test_list_values_on_the_command_line():
    assert parse_overrides(["--lora_target_modules", "q_proj", "v_proj", "--use_peft"]) == {
        "lora_target_modules": ["q_proj", "v_proj"], "use_peft": True}
    config = build_config(TrainConfig, None, parse_overrides(["--lora_target_modules", "q_proj", "v_proj,k_proj",
                                                              "--report_to", "tensorboard"]))
    assert config.lora_target_modules == ["q_proj", "v_proj", "k_proj"] and config.report_to == "tensorboard"
    with pytest.raises(AlignlabError, match=r"--beta takes one value, got 2: '0.1 0.2'"):
        build_config(TrainConfig, None, parse_overrides(["--beta", "0.1", "0.2"]))
    with pytest.raises(AlignlabError, match=r"--seed takes one value"):
        build_config(TrainConfig, None, parse_overrides(["--seed", "1", "2"]))


tokens = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["--", "--a", "--a=1", "--b-c", "-x", "--=", "1"]),
                            st.text(max_size=12).map(lambda t: "--" + t)), max_size=8)


@settings(max_examples=400, deadline=None)
@given(tokens)
def test_parse_overrides_gives_a_mapping_or_an_alignlab_error(argv):
    try:
        overrides = parse_overrides(argv)
    except AlignlabError:
        return
    assert isinstance(overrides, dict)
    for key, value in overrides.items():
        assert isinstance(key, str) and (value is True or isinstance(value, str) or (
            isinstance(value, list) and len(value) > 1 and all(isinstance(v, str) for v in value)))


def test_lora_variants_reach_peft(tiny_model):
    pytest.importorskip("peft")
    from alignlab.models.loading import load_causal_lm
    from alignlab.training.policy import lora_config, prepare_policy

    config = build_config(TrainConfig, None, parse_overrides(["--use_peft", "--use_dora", "--use_rslora",
                                                              "--lora_modules_to_save", "lm_head"]))
    model = load_causal_lm(str(tiny_model))
    peft_config = lora_config(config, model)
    assert (peft_config.use_dora, peft_config.use_rslora, list(peft_config.modules_to_save)) == (True, True, ["lm_head"])
    policy = prepare_policy(model, dataclasses.replace(config, model=str(tiny_model)))
    trained = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert any("lora_magnitude_vector" in name for name in trained)  # DoRA's magnitudes
    assert any("lm_head.modules_to_save" in name for name in trained)


# ------------------------------------------------------------------ a TRL config, trained for real

def trl_run_yaml(tmp_path, tiny_model, pairs_file, **extra) -> str:
    """A DPOConfig YAML as TRL's docs write one, on a dataset with train and test splits."""
    import datasets

    records = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:12]),
                                   "test": datasets.Dataset.from_list(records[12:])})
    splits.save_to_disk(tmp_path / "dataset")
    return write_yaml(tmp_path / "dpo.yaml", {
        "model_name_or_path": str(tiny_model), "dataset_name": str(tmp_path / "dataset"),
        "dataset_train_split": "train", "dataset_test_split": "test", "learning_rate": 5.0e-3,
        "num_train_epochs": 1, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
        "gradient_accumulation_steps": 1, "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2,
        "output_dir": str(tmp_path / "out"), "remove_unused_columns": False, "report_to": ["none"],
        "max_length": 64, "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "save_strategy": "steps",
        "save_steps": 2, "save_total_limit": 1, "seed": 42, "precompute_ref_log_probs": True, "bf16": False,
        **extra})


def metric_rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_trl_dpo_yaml_trains_unchanged_and_its_output_loads_with_transformers(tiny_model, pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM

    path = trl_run_yaml(tmp_path, tiny_model, pairs_file, beta=0.1, loss_type="sigmoid")
    assert main(["train", "--method", "dpo", "--config", path]) == 0
    out = tmp_path / "out"
    rows = metric_rows(out)
    trained = [r for r in rows if "loss" in r]
    assert trained[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as the reference
    assert trained[0]["rewards/accuracies"] == 0 and "rewards/margins" in trained[-1]
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 2]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # save_total_limit 1
    AutoModelForCausalLM.from_pretrained(out)


def test_loss_type_ipo_in_a_trl_yaml_trains_ipo(tiny_model, pairs_file, tmp_path):
    """With the policy equal to the reference, IPO's loss is (0 − 1/(2β))² = 25 at β = 0.1 (DPO's: log 2)."""
    path = trl_run_yaml(tmp_path, tiny_model, pairs_file, beta=0.1, loss_type="ipo", eval_strategy="no")
    assert main(["train", "--config", path]) == 0
    assert metric_rows(tmp_path / "out")[0]["loss"] == pytest.approx(25.0, rel=1e-4)
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["method"] == "ipo"
