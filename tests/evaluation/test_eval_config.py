"""`alignlab eval`'s EvalConfig: defaults < YAML (`--config`) < `--key value`, and the resolved
`config.yaml` each evaluation writes, which repeats it."""

import sys

import pyarrow.parquet as pq
import pytest
import yaml

from alignlab.cli import main
from alignlab.config import build_config
from alignlab.errors import AlignlabError
from alignlab.evaluation.config import EvalConfig
from alignlab.models.tiny import build_tiny_classifier


@pytest.fixture
def gold(tiny_model, tmp_path):
    build_tiny_classifier(tmp_path / "gold", tiny_model)
    return tmp_path / "gold"


def written_config(out) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())


def test_eval_reads_a_yaml_config_and_the_command_line_overrides_it(tiny_model, pairs_file, gold, tmp_path):
    config = tmp_path / "eval.yaml"
    out = tmp_path / "results"
    config.write_text(f"model: {tiny_model}\ndata: {pairs_file}\ngold_rm: {gold}\nout: {out}\n"
                      "max_new_tokens: 4\nlimit: 3\ngreedy: true\n")
    assert main(["eval", "--config", str(config), "--limit", "2"]) == 0
    resolved = written_config(out)
    assert (resolved["limit"], resolved["max_new_tokens"], resolved["greedy"]) == (2, 4, True)
    assert resolved["top_p"] == EvalConfig.top_p and resolved["judge_url"] is None  # the defaults stand
    assert len(pq.read_table(out / "samples.parquet")) == 2
    # --overwrite replaces config.yaml with the results; `--overwrite true` is the same setting
    assert main(["eval", "--config", str(config), "--overwrite", "true", "--seed", "3"]) == 0
    assert (written_config(out)["seed"], written_config(out)["limit"]) == (3, 3)
    assert len(pq.read_table(out / "samples.parquet")) == 3


def test_config_yaml_repeats_the_evaluation(tiny_model, pairs_file, gold, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["eval", "--model", str(tiny_model), "--data", str(pairs_file), "--gold_rm", str(gold),
                 "--out", str(first), "--max_new_tokens", "5", "--limit", "3", "--seed", "7"]) == 0
    assert written_config(first)["out"] == str(first)
    assert main(["eval", "--config", str(first / "config.yaml"), "--out", str(again)]) == 0
    assert {**written_config(again), "out": None} == {**written_config(first), "out": None}
    assert pq.read_table(again / "samples.parquet").equals(pq.read_table(first / "samples.parquet"))


def test_eval_settings_are_typed_and_checked_before_any_work(tiny_model, pairs_file, tmp_path, capsys):
    config = build_config(EvalConfig, None, {"model": "m", "limit": "5", "greedy": True, "judge_timeout": "2"})
    assert (config.limit, config.greedy, config.judge_timeout, config.split) == (5, True, 2.0, "test")
    with pytest.raises(AlignlabError, match="'judge_retries' must be an integer, got 'many'"):
        build_config(EvalConfig, None, {"judge_retries": "many"})
    with pytest.raises(AlignlabError, match="unknown key 'max_new_token'.*max_new_tokens"):
        build_config(EvalConfig, None, {"max_new_token": "4"})
    assert main(["eval", "--data", str(pairs_file), "--gold_rm", str(tiny_model), "--out", str(tmp_path / "o")]) == 2
    assert "'model' is required" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_generation_backend_flag_is_checked_and_a_missing_vllm_refused_before_any_work(
        tiny_model, pairs_file, gold, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    common = ["eval", "--model", str(tiny_model), "--data", str(pairs_file), "--gold_rm", str(gold),
              "--out", str(tmp_path / "o")]
    assert main([*common, "--generation_backend", "vllm"]) == 2
    assert "pip install 'alignlab[vllm]'" in capsys.readouterr().err
    assert main([*common, "--generation-backend", "vlm"]) == 2
    assert "generation_backend 'vlm'; did you mean 'vllm'?" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
