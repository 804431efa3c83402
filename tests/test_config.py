"""Typed config: YAML < CLI precedence, method parameters, errors that point at the fix."""

import pytest

from alignlab.config import TrainConfig, build_config, parse_overrides
from alignlab.errors import AlignlabError, InputError


def test_cli_overrides_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: simpo\nlearning_rate: 1.0e-5\nbatch_size: 4\nparams:\n  beta: 2.5\n")
    config = build_config(TrainConfig, str(path), parse_overrides(["--batch_size", "16", "--gamma=0.7"]))
    assert (config.method, config.learning_rate, config.batch_size) == ("simpo", 1e-5, 16)
    assert config.params == {"beta": 2.5, "gamma": "0.7"}
    assert config.epochs == TrainConfig().epochs
    config.model, config.data, config.out = "m", "d", "o"
    config.validate()
    assert config.params == {"beta": 2.5, "gamma": 0.7}


def test_unknown_key_suggests_the_closest_valid_name():
    with pytest.raises(AlignlabError, match=r"unknown key 'learning_rat'; did you mean 'learning_rate'"):
        build_config(TrainConfig, None, {"learning_rat": "1"})
    with pytest.raises(AlignlabError, match=r"'gamma'"):
        build_config(TrainConfig, None, {"method": "dpo", "gamma": "1"})  # gamma is SimPO's, not DPO's


def test_mistyped_values_name_the_key():
    with pytest.raises(AlignlabError, match=r"'epochs' must be an integer, got 'two' \(or a number with a fraction"):
        build_config(TrainConfig, None, {"epochs": "two"})
    assert build_config(TrainConfig, None, {"epochs": "1.5"}).epochs == 1.5  # TRL's fractional num_train_epochs
    whole = build_config(TrainConfig, None, {"num_train_epochs": "3.0"}).epochs
    assert whole == 3 and isinstance(whole, int)  # a whole number stays an integer (range(), config.yaml)
    with pytest.raises(AlignlabError, match=r"'epochs' must be > 0"):
        TrainConfig(model="m", data="d", out="o", epochs=0).validate()
    with pytest.raises(AlignlabError, match=r"'trust_remote_code' must be true or false"):
        build_config(TrainConfig, None, {"trust_remote_code": "maybe"})
    assert build_config(TrainConfig, None, {"trust_remote_code": "true"}).trust_remote_code is True
    assert build_config(TrainConfig, None, {"reward_model": "none"}).reward_model is None


def test_yaml_with_a_tab_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: dpo\nparams:\n\tbeta: 0.1\n")
    with pytest.raises(InputError) as err:
        build_config(TrainConfig, str(path), {})
    assert f"{path}:3:" in str(err.value) and "tabs" in str(err.value)


def test_validation_rejects_impossible_settings():
    base = dict(model="m", data="d", out="o")
    with pytest.raises(AlignlabError, match="max_prompt_length"):
        TrainConfig(**base, max_length=64, max_prompt_length=64).validate()
    with pytest.raises(AlignlabError, match="'data' is required"):
        TrainConfig(model="m", out="o").validate()
    with pytest.raises(AlignlabError, match="must be > 0"):
        TrainConfig(**base, method="var", params={"lam": -1}).validate()


def test_a_bare_flag_turns_an_on_off_setting_on_and_any_other_setting_needs_a_value():
    assert parse_overrides(["--overwrite", "--beta", "0.2", "--resume"]) == {"overwrite": True, "beta": "0.2",
                                                                             "resume": True}
    config = build_config(TrainConfig, None, parse_overrides(["--method", "var", "--length_normalize", "--overwrite"]))
    assert config.overwrite is True and config.params["length_normalize"] is True
    for argv in (["--beta"], ["--beta", "--overwrite"], ["--max_length"]):
        name = argv[0]
        with pytest.raises(AlignlabError, match=f"{name} needs a value .*write {name} VALUE"):
            build_config(TrainConfig, None, parse_overrides(argv))
    with pytest.raises(AlignlabError, match="unknown key 'frobnicate'"):
        build_config(TrainConfig, None, parse_overrides(["--frobnicate"]))
    with pytest.raises(AlignlabError, match="unexpected argument"):
        parse_overrides(["beta", "1"])


def test_trl_names_set_our_fields_and_config_yaml_writes_ours(tmp_path):
    """A TRL user's YAML and flags work unchanged; the resolved config speaks our names only."""
    from alignlab.config import dump_yaml

    trl_yaml = tmp_path / "trl.yaml"
    trl_yaml.write_text("model_name_or_path: m\ndataset_name: d\noutput_dir: o\nper_device_train_batch_size: 4\n"
                        "num_train_epochs: 3\nlr_scheduler_type: cosine\nbf16: true\nsave_steps: 50\n"
                        "model_revision: v1\ndataset_train_split: train_prefs\ngradient_checkpointing: true\n"
                        "use_peft: true\nlora_r: 8\nreport_to: tensorboard\nbeta: 0.3\npadding_free: false\n")
    config = build_config(TrainConfig, str(trl_yaml), parse_overrides(["--fp16", "false", "--dataset_dir", "harmless-base"]))
    expected = {"model": "m", "data": "d", "out": "o", "batch_size": 4, "epochs": 3, "lr_scheduler": "cosine",
                "checkpoint_steps": 50, "revision": "v1", "data_split": "train_prefs", "gradient_checkpointing": True,
                "use_peft": True, "lora_r": 8, "report_to": "tensorboard", "data_dir": "harmless-base",
                "packing": False}
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.mixed_precision == "no"  # the command line's --fp16 false overrides the file's bf16: true
    assert config.params == {"beta": 0.3}
    written = dump_yaml(config)
    assert "output_dir" not in written and "per_device_train_batch_size" not in written and "out: o" in written
    assert build_config(TrainConfig, None, parse_overrides(["--bf16"])).mixed_precision == "bf16"
    assert build_config(TrainConfig, None, {"fp16": "true"}).mixed_precision == "fp16"


def test_a_setting_given_under_both_names_is_refused(tmp_path):
    with pytest.raises(AlignlabError, match="'out' and 'output_dir' both set 'out'"):
        build_config(TrainConfig, None, parse_overrides(["--out", "a", "--output_dir", "b"]))
    both = tmp_path / "both.yaml"
    both.write_text("bf16: true\nmixed_precision: fp16\n")
    with pytest.raises(AlignlabError, match=r"both.yaml: key 'mixed_precision': 'bf16' and 'mixed_precision' both set 'mixed_precision'"):
        build_config(TrainConfig, str(both), {})
    with pytest.raises(AlignlabError, match="'bf16' must be true or false"):
        build_config(TrainConfig, None, {"bf16": "yes please"})


def test_new_choices_are_checked():
    for field, value in (("mixed_precision", "fp8"), ("report_to", "tensorbaord"), ("generation_backend", "vvlm")):
        config = build_config(TrainConfig, None, {"model": "m", "data": "d", "out": "o", field: value})
        with pytest.raises(AlignlabError, match=field):
            config.validate()


def test_a_study_takes_trl_names_in_its_training_section():
    from alignlab.study.config import StudyConfig

    config = StudyConfig(out="o", training={"per_device_train_batch_size": 4, "bf16": True, "num_train_epochs": "2"})
    config.validate()
    assert config.training == {"batch_size": 4, "mixed_precision": "bf16", "epochs": 2}
