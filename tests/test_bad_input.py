"""Bad input to `alignlab train` / `train-rm`: exit 2, one message naming what is wrong and the fix,
no traceback, nothing written. (Data-file errors are covered in test_data.py and test_cli.py.)"""

import json
import shutil

import pytest
import torch

from alignlab.cli import main


def run_cli(args, capsys):
    capsys.readouterr()  # drop what the test's own setup printed
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def assert_clean_failure(code, err, out, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


def train_args(model, data, out, *extra):
    return ["train", "--method", "dpo", "--model", str(model), "--data", str(data), "--out", str(out),
            "--max_length", "64", "--max_prompt_length", "32", *extra]


@pytest.fixture()
def model_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "model")


def test_model_without_safetensors_is_refused(model_copy, pairs_file, tmp_path, capsys):
    (model_copy / "model.safetensors").unlink()
    torch.save({"weights": 1}, model_copy / "pytorch_model.bin")  # a pickle we must not load
    out = tmp_path / "run"
    code, err = run_cli(train_args(model_copy, pairs_file, out), capsys)
    assert_clean_failure(code, err, out, str(model_copy), "safetensors")


def test_corrupt_safetensors_is_a_clear_error(model_copy, pairs_file, tmp_path, capsys):
    (model_copy / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    out = tmp_path / "run"
    code, err = run_cli(train_args(model_copy, pairs_file, out), capsys)
    assert_clean_failure(code, err, out, str(model_copy), "cannot load model weights")


def test_reward_model_with_two_labels_is_refused(tiny_model, pairs_file, tmp_path, capsys):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(tiny_model)
    config.num_labels = 2
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm2")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "rm2")
    out = tmp_path / "run"
    code, err = run_cli(["train", "--method", "var", "--model", str(tiny_model), "--data", str(pairs_file),
                         "--out", str(out), "--reward-model", str(tmp_path / "rm2"), "--max_length", "64",
                         "--max_prompt_length", "32"], capsys)
    assert_clean_failure(code, err, out, "num_labels=2", "one score")


def test_var_without_rewards_says_how_to_give_them(tiny_model, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    out = tmp_path / "run"
    code, err = run_cli(["train", "--method", "var", "--model", str(tiny_model), "--data", str(data),
                         "--out", str(out)], capsys)
    assert_clean_failure(code, err, out, "--reward-model", "reward_chosen")


@pytest.mark.parametrize("extra,needles", [
    (["--method", "dop"], ["unknown method 'dop'", "did you mean 'dpo'"]),
    (["--bta", "0.1"], ["unknown key 'bta'", "did you mean 'beta'"]),
    (["--beta", "-0.5"], ["'beta' must be > 0"]),
    (["--beta", "abc"], ["'beta' must be a float"]),
    (["--epochs", "two"], ["'epochs' must be a int"]),
    (["--lam", "1.0"], ["unknown key 'lam'"]),  # VAR's parameter given to DPO
])
def test_bad_settings(extra, needles, tiny_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(train_args(tiny_model, pairs_file, out, *extra), capsys)
    assert_clean_failure(code, err, out, *needles)


def test_config_yaml_with_a_tab(tiny_model, pairs_file, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: dpo\nparams:\n\tbeta: 0.1\n")
    out = tmp_path / "run"
    code, err = run_cli(train_args(tiny_model, pairs_file, out, "--config", str(config)), capsys)
    assert_clean_failure(code, err, out, f"{config}:3", "tabs")


def test_output_under_a_file_is_refused_before_work(tiny_model, pairs_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "run"
    code, err = run_cli(train_args(tiny_model, pairs_file, out), capsys)
    assert code == 2 and "cannot write" in err and "Traceback" not in err


def test_existing_run_directory_is_not_overwritten(tiny_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = run_cli(train_args(tiny_model, pairs_file, out), capsys)
    assert code == 2 and "--overwrite" in err
    assert (out / "precious.txt").read_text() == "keep me"


def test_train_rm_bad_eval_fraction(tiny_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "rm"
    code, err = run_cli(["train-rm", "--model", str(tiny_model), "--data", str(pairs_file), "--out", str(out),
                         "--eval_fraction", "1.5"], capsys)
    assert_clean_failure(code, err, out, "eval_fraction")
