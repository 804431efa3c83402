"""`alignlab data` as a user runs it: the installed console script, exit codes, files left behind."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.cli import main
from conftest import SHARED

HH_SAMPLE = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
ALIGNLAB = shutil.which("alignlab", path=str(Path(sys.executable).parent)) or "alignlab"


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([ALIGNLAB, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.skipif(not HH_SAMPLE.exists(), reason=f"shared HH-RLHF sample not found at {HH_SAMPLE}")
@pytest.mark.slow
def test_data_summarises_and_writes_hh_pairs(tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = run("data", str(HH_SAMPLE), "--format", "hh-rlhf", "--out", str(out))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.strip().splitlines()
    total = sum(1 for _ in gzip.open(HH_SAMPLE, "rt"))
    rows = [json.loads(row) for row in out.read_text().splitlines()]
    assert f"kept {len(rows)} pairs" in line
    dropped = total - len(rows)
    assert f"dropped {dropped}" in line
    assert set(rows[0]) == {"id", "prompt", "chosen", "rejected"}
    assert len({row["id"] for row in rows}) == len(rows)


@pytest.mark.slow
def test_data_pku_filter_counts_drops(tmp_path):
    records = [
        {"prompt": "p1", "response_0": "safe", "response_1": "unsafe", "better_response_id": 1,
         "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": False},
        {"prompt": "p2", "response_0": "a", "response_1": "b", "better_response_id": 0,
         "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": True},
        {"prompt": "p3", "response_0": "c", "response_1": "d", "better_response_id": 0,
         "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": False},
    ]
    path = tmp_path / "pku.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "pairs.jsonl"
    result = run("data", str(path), "--format", "pku-saferlhf", "--filter", "double-safe-unsafe", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "kept 1 pairs" in result.stdout and "both safe: 1" in result.stdout and "both unsafe: 1" in result.stdout
    [row] = [json.loads(r) for r in out.read_text().splitlines()]
    assert (row["chosen"], row["rejected"]) == ("safe", "unsafe")


@pytest.mark.slow
@pytest.mark.parametrize("content,needle", [
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": \n', ":2:"),
    ('{"prompt": "p", "chosen": "a"}\n', "'rejected'"),
    ('{"prompt": "p", "chosen": 3, "rejected": "b"}\n', "'chosen'"),
])
def test_bad_input_exits_nonzero_with_one_message_and_no_output(tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    out = tmp_path / "out.jsonl"
    result = run("data", str(path), "--out", str(out))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "bad.jsonl" in message and needle in message
    assert "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


@pytest.mark.slow
def test_unknown_format_lists_the_valid_ones(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    result = run("data", str(path), "--format", "alpaca")
    assert result.returncode == 2
    assert all(name in result.stderr for name in ("hh-rlhf", "pku-saferlhf", "pairs"))


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "data", str(tmp_path / "missing.jsonl"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_every_flag_is_spelled_with_underscores_and_the_dashed_spelling_is_accepted():
    from alignlab.cli import build_parser, underscored

    assert underscored("--max-new-tokens=4") == "--max_new_tokens=4" and underscored("-x-y") == "-x-y"
    assert underscored("--") == "--" and underscored("--a") == "--a"
    parser = build_parser()
    dashed = [underscored(t) for t in ["eval", "--model", "m", "--data", "d", "--gold-rm", "g", "--max-new-tokens",
                                       "3", "--top-p", "0.5", "--trust-remote-code", "--judge-url", "http://x"]]
    plain = ["eval", "--model", "m", "--data", "d", "--gold_rm", "g", "--max_new_tokens", "3", "--top_p", "0.5",
             "--trust_remote_code", "--judge_url", "http://x"]
    assert vars(parser.parse_args(dashed)) == vars(parser.parse_args(plain))
    for command in ("data", "train", "train-rm", "run", "sweep", "report", "verdict", "eval", "bench"):
        subparser = parser._subparsers._group_actions[0].choices[command]
        flags = [s for action in subparser._actions for s in action.option_strings if s.startswith("--")]
        assert all("-" not in flag[2:] for flag in flags), (command, flags)


@pytest.mark.parametrize("argv", [["run", "--seeds", "2"], ["sweep", "--grid", "small", "--seeds", "2"]])
def test_seeds_flag_reaches_the_study_config(argv, tmp_path, monkeypatch):
    import alignlab.study.sweep as sweep

    seen = []
    monkeypatch.setattr(sweep, "run_sweep", lambda config: seen.append(config) or config.out)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert seen[0].seeds == 2 and seen[0].first_training_seed == seen[0].seed == 0
    assert main([*argv, "--seed", "3", "--training_seed", "7", "--out", str(tmp_path / "other")]) == 0
    assert (seen[1].seed, seen[1].training_seed, seen[1].first_training_seed) == (3, 7, 7)


def test_train_help_lists_every_setting_with_its_type_default_and_trl_name(capsys):
    """A TRL user finds every field in `alignlab train --help` (and `train-rm --help`), the name they know beside ours."""
    import dataclasses

    from alignlab.config import RewardModelConfig, TrainConfig

    for command, cls in (("train", TrainConfig), ("train-rm", RewardModelConfig)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        listing = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for spec in dataclasses.fields(cls):
            if spec.name == "params":
                assert "--beta" in listing or command == "train-rm"  # hyper-parameters: in the epilog
                continue
            assert f"--{spec.name} " in listing, (command, spec.name)
            assert " ".join(spec.metadata["help"].split()) in listing, (command, spec.name)
        assert "(default: 1e-0" in listing and "TRL: per_device_train_batch_size" in listing
        assert "--use_peft [true|false]" in listing and "--lora_r INT" in listing


def test_bare_on_off_flags_and_trl_flags_on_the_train_command(tmp_path, monkeypatch):
    import alignlab.training as training

    seen = []
    monkeypatch.setattr(training, "train", lambda config: seen.append(config) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["train", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", str(tmp_path / "o"),
              "--use_peft", "--gradient_checkpointing", "--bf16", "--disable_dropout", "false", "--beta", "0.2"])
    config = seen[0]
    config.validate()  # the trainer's first step: types the method's hyper-parameters
    assert (config.model, config.data, config.use_peft, config.gradient_checkpointing) == ("m", "d", True, True)
    assert config.mixed_precision == "bf16" and config.disable_dropout is False and config.params == {"beta": 0.2}


@pytest.mark.parametrize("argv, field, value", [
    (["run", "--world", "tiny", "--grid", "hitchhiker"], "preset", "tiny"),
    (["run", "--grid", "hitchhiker"], "grid_preset", "hitchhiker"),
    (["sweep", "--grid", "var", "--world", "tiny"], "grid_preset", "var"),
])
def test_world_and_grid_name_what_they_pick(argv, field, value, tmp_path, monkeypatch):
    import alignlab.study.sweep as sweep

    seen = []
    monkeypatch.setattr(sweep, "run_sweep", lambda config: seen.append(config) or config.out)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert getattr(seen[0], field) == value


@pytest.mark.parametrize("argv, field, value, replacement", [
    (["run", "--preset", "tiny"], "preset", "tiny", "--world"),
    (["sweep", "--preset", "var"], "grid_preset", "var", "--grid"),
])
def test_preset_still_works_with_a_deprecation_message(argv, field, value, replacement, tmp_path, monkeypatch, capsys):
    import alignlab.study.sweep as sweep

    seen = []
    monkeypatch.setattr(sweep, "run_sweep", lambda config: seen.append(config) or config.out)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert getattr(seen[0], field) == value
    assert f"--preset is deprecated in `alignlab {argv[0]}`: use {replacement}" in capsys.readouterr().err
    assert main([*argv, replacement, value, "--out", str(tmp_path / "out2")]) == 2
def test_data_reads_a_saved_dataset_split_with_its_columns(tmp_path, capsys):
    import datasets

    rows = [{"question": "Q", "good": "A", "bad": "B", "rating_good": 9.0, "rating_bad": 1}]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    out = tmp_path / "pairs.jsonl"
    assert main(["data", str(tmp_path / "saved"), "--split", "test", "--prompt_column", "question",
                 "--chosen_column", "good", "--rejected_column", "bad", "--reward_chosen_column", "rating_good",
                 "--reward-rejected-column", "rating_bad", "--out", str(out)]) == 0
    assert "kept 1 pairs" in capsys.readouterr().out
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"id": "saved-test-0", "prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B",
         "reward_chosen": 9.0, "reward_rejected": 1.0}]


def test_data_passes_the_hub_dataset_options(monkeypatch, capsys):
    import datasets

    calls = []
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # the stand-in below is the hub: no probe
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or [
        {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: B"}])
    assert main(["data", "Anthropic/hh-rlhf", "--data_dir", "harmless-base", "--dataset_config", "default",
                 "--revision", "v2", "--split", "test"]) == 0
    assert calls == [(("Anthropic/hh-rlhf",), {"name": "default", "data_dir": "harmless-base", "revision": "v2",
                                               "split": "test"})]
    assert "kept 1 pairs" in capsys.readouterr().out


def test_eval_flags_reach_the_eval_config(monkeypatch):
    from alignlab.evaluation import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "run_eval", lambda config: seen.append(config) or 0)
    assert main(["eval", "--model", "org/m", "--revision", "v1", "--data", "org/d", "--data_revision", "v2",
                 "--dataset_config", "c", "--data_dir", "harmless-base", "--prompt_column", "q", "--chosen_column",
                 "good", "--rejected_column", "bad", "--raw_prompts", "--sft", "org/s", "--sft_revision", "v3",
                 "--gold_rm", "g"]) == 0
    [config] = seen
    assert (config.revision, config.data_revision, config.dataset_config, config.data_dir) == (
        "v1", "v2", "c", "harmless-base")
    assert (config.prompt_column, config.chosen_column, config.rejected_column) == ("q", "good", "bad")
    assert config.raw_prompts is True and config.sft_revision == "v3"


@pytest.mark.parametrize("pairs", ["0", "-3"])
def test_bench_refuses_a_pair_count_below_one_before_any_work(pairs, capsys, monkeypatch):
    monkeypatch.setattr("alignlab.bench.runner.run_bench", lambda *a, **k: pytest.fail("the bench ran"))
    assert main(["bench", "--quick", "--pairs", pairs]) == 2
    assert f"bench: --pairs must be >= 1, got {pairs}" in capsys.readouterr().err
