"""Bad input, table-driven (issue 8): every malformed input to `alignlab data`, `train`, `train-rm`,
`eval` and `run` exits 2 with exactly one line `alignlab: error: ...` naming the file and line/row
and field (or the config key) and saying what to do; no traceback unless `--debug` (which raises the
error instead); nothing written — no output file or directory, no temp or partial file, and nothing
beside the inputs. Then the inputs that are odd but fine: a tokenizer without a pad token, and
prompts longer than the maximum length (truncated by the documented rule and counted).

Each case builds its inputs under `inputs/` and points every output under `out/`, which must stay
empty. (The console script itself, as a subprocess, is exercised in test_cli.py.)"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from alignlab.cli import main
from alignlab.errors import AlignlabError
from alignlab.models.tiny import build_tiny_classifier

CASES = {}


def case(name):
    def register(build):
        CASES[name] = build
        return build
    return register


class Inputs:
    """Builds one case's input files; `self.out` is where its outputs go (and must not appear)."""

    def __init__(self, root: Path, tiny_model: Path, pairs_file: Path):
        self.dir = root / "inputs"
        self.dir.mkdir()
        self.outputs = root / "out"
        self.outputs.mkdir()
        self.out = self.outputs / "result"
        self.tiny_model, self.pairs = tiny_model, pairs_file

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.dir / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def jsonl(self, name: str, *records) -> Path:
        return self.file(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))

    def model_copy(self, name: str = "model") -> Path:
        return Path(shutil.copytree(self.tiny_model, self.dir / name))

    def classifier(self, labels: int, name: str = "rm") -> Path:
        return build_tiny_classifier(self.dir / name, self.tiny_model, num_labels=labels)

    def under_a_file(self, name: str = "result") -> Path:
        return self.file("a-file", "x") / name

    def train(self, *extra, data=None, model=None, out=None, method="dpo") -> list[str]:
        return ["train", "--method", method, "--model", str(model or self.tiny_model), "--data",
                str(data or self.pairs), "--out", str(out or self.out), "--max_length", "64",
                "--max_prompt_length", "32", *extra]

    def train_rm(self, *extra, data=None, model=None, out=None) -> list[str]:
        return ["train-rm", "--model", str(model or self.tiny_model), "--data", str(data or self.pairs),
                "--out", str(out or self.out), "--max_length", "64", "--max_prompt_length", "32", *extra]

    def eval(self, *extra, data=None, model=None, gold=None, out=None) -> list[str]:
        return ["eval", "--model", str(model or self.tiny_model), "--data", str(data or self.pairs),
                "--gold_rm", str(gold or self.classifier(1, "gold")), "--out", str(out or self.out),
                "--max_new_tokens", "4", "--limit", "2", *extra]

    def run(self, *extra, out=None) -> list[str]:
        return ["run", "--world", "tiny", "--out", str(out or self.out), *extra]

    def sweep(self, grid_yaml: str | None, *extra, out=None) -> list[str]:
        config = [str(self.file("sweep.yaml", grid_yaml))] if grid_yaml is not None else []
        return ["sweep", *config, "--world", "tiny", "--out", str(out or self.out), *extra]


PAIR = {"prompt": "What color is the sky?", "chosen": "Blue.", "rejected": "I will not say."}


def pair(**fields):
    return {**PAIR, **fields}


# ---------------------------------------------------------------- alignlab data

@case("data: malformed JSON line in the middle")
def _(t):
    path = t.jsonl("pairs.jsonl", pair(), '{"prompt": "p", "chosen": ', pair())
    return ["data", str(path), "--out", str(t.out)], [f"{path}:2:", "not valid JSON", "one JSON object per line"]


@case("data: missing chosen")
def _(t):
    path = t.jsonl("pairs.jsonl", {"prompt": "p", "rejected": "r"})
    return ["data", str(path), "--out", str(t.out)], [f"{path}:1:", "field 'chosen'", "is missing", "needs 'chosen' and 'rejected'"]


@case("data: missing rejected")
def _(t):
    path = t.jsonl("pairs.jsonl", pair(), {"prompt": "p", "chosen": "c"})
    return ["data", str(path), "--out", str(t.out)], [f"{path}:2:", "field 'rejected'", "is missing", "needs 'chosen' and 'rejected'"]


@case("data: wrong type, chosen is a number")
def _(t):
    path = t.jsonl("pairs.jsonl", pair(chosen=3))
    return ["data", str(path)], [f"{path}:1:", "field 'chosen'", "expected a string, got a number", "needs 'chosen' and 'rejected'"]


@case("data: wrong type, prompt is an object")
def _(t):
    path = t.jsonl("pairs.jsonl", pair(), pair(), pair(prompt={"text": "hi"}))
    return ["data", str(path)], [f"{path}:3:", "field 'prompt'", "expected a list of messages, got an object",
                                 "needs 'chosen' and 'rejected'"]


@case("data: wrong type, reward is text")
def _(t):
    path = t.jsonl("pairs.jsonl", pair(reward_chosen="high"))
    return ["data", str(path)], [f"{path}:1:", "field 'reward_chosen'", "expected a finite number, got 'high'",
                                 "Give a number"]


@case("data: empty response")
def _(t):
    path = t.jsonl("pairs.jsonl", pair(), pair(rejected="   "))
    return ["data", str(path), "--out", str(t.out)], [f"{path}:2:", "field 'rejected'", "empty response", "Fill in"]


@case("data: duplicate ids")
def _(t):
    path = t.jsonl("pairs.jsonl", pair(id="a"), pair(id="b"), pair(id="a"))
    return ["data", str(path), "--out", str(t.out)], [f"{path}:3:", "field 'id'", "duplicate id 'a'",
                                                      "first used at line 1", "unique id"]


@case("data: non-UTF-8 bytes")
def _(t):
    path = t.file("pairs.jsonl", json.dumps(pair()).encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a"}\n')
    return ["data", str(path), "--out", str(t.out)], [f"{path}:2:", "not valid UTF-8", "Save the file as UTF-8"]


@case("data: a 50 MB single line")
def _(t):
    path = t.dir / "pairs.jsonl"
    with open(path, "wb") as handle:
        handle.write(json.dumps(pair()).encode() + b"\n" + b'{"prompt": "' + b"a" * (50 << 20) + b'"}\n')
    return ["data", str(path), "--out", str(t.out)], [f"{path}:2:", "longer than 16 MiB", "one record per line"]


@case("data: gzip truncated")
def _(t):
    blob = gzip.compress("".join(json.dumps(pair(id=str(i))) + "\n" for i in range(500)).encode())
    path = t.file("pairs.jsonl.gz", blob[: len(blob) // 2])
    return ["data", str(path), "--out", str(t.out)], [f"{path}:", "gzip data is truncated or corrupt",
                                                      "compress the file again"]


@case("data: empty file")
def _(t):
    path = t.file("pairs.jsonl", "")
    return ["data", str(path), "--out", str(t.out)], [f"{path}:", "no records", "check the path"]


@case("data: PKU record with a non-boolean safety flag")
def _(t):
    record = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0,
              "safer_response_id": 1, "is_response_0_safe": True, "is_response_1_safe": "yes"}
    path = t.jsonl("pku.jsonl", record)
    return (["data", str(path), "--format", "pku-saferlhf", "--filter", "double-safe-unsafe", "--out", str(t.out)],
            [f"{path}:1:", "field 'is_response_1_safe'", "expected true or false, got 'yes'", "must be booleans"])


@case("data: CSV row with a stray comma")
def _(t):
    path = t.file("pairs.csv", "prompt,chosen,rejected\np,a,b\np,a,b,c\n")
    return ["data", str(path), "--out", str(t.out)], [f"{path}:3:", "4 cells", "3 columns", "Quote cells"]


@case("data: unknown format")
def _(t):
    return ["data", str(t.pairs), "--format", "alpaca", "--out", str(t.out)], ["unknown data format 'alpaca'",
                                                                               "hh-rlhf, pku-saferlhf, pairs"]


@case("data: output under a regular file")
def _(t):
    out = t.under_a_file("pairs.jsonl")
    return ["data", str(t.pairs), "--out", str(out)], [str(out), "is a file, not a directory", "choose another --out"]


# ---------------------------------------------------------------- alignlab train

@case("train: unknown method")
def _(t):
    return t.train(method="dop"), ["unknown method 'dop'", "did you mean 'dpo'", "Valid:"]


@case("train: mistyped hyper-parameter")
def _(t):
    return t.train("--bta", "0.1"), ["command line", "unknown key 'bta'", "did you mean 'beta'"]


@case("train: hyper-parameter of another method")
def _(t):
    return t.train("--lam", "1.0"), ["command line", "unknown key 'lam'", "Valid:"]


@case("train: mistyped config key in the YAML")
def _(t):
    config = t.file("run.yaml", "method: dpo\nlearning_rat: 0.001\n")
    return t.train("--config", str(config)), [str(config), "unknown key 'learning_rat'",
                                              "did you mean 'learning_rate'"]


@case("train: negative beta")
def _(t):
    return t.train("--beta", "-0.5"), ["'beta' must be > 0, got -0.5"]


@case("train: negative lambda")
def _(t):
    return t.train("--lam", "-1", method="var"), ["var", "'lam' must be > 0, got -1"]


@case("train: wrong type of setting")
def _(t):
    return t.train("--epochs", "two"), ["command line", "'epochs' must be a", "an integer, got 'two'"]


@case("train: YAML with a tab")
def _(t):
    config = t.file("run.yaml", "method: dpo\nparams:\n\tbeta: 0.1\n")
    return t.train("--config", str(config)), [f"{config}:3:", "invalid YAML", "never tabs"]


@case("train: model directory without model.safetensors")
def _(t):
    model = t.model_copy()
    (model / "model.safetensors").unlink()
    torch.save({"weights": 1}, model / "pytorch_model.bin")  # a pickle that must not be loaded
    return t.train(model=model), [str(model), "no *.safetensors weights", "re-save the model"]


@case("train: corrupt model.safetensors")
def _(t):
    model = t.model_copy()
    (model / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    return t.train(model=model), [str(model / "model.safetensors"), "cannot load model weights",
                                  "download or save the model again"]


@case("train: reward model with two labels")
def _(t):
    rm = t.classifier(2)
    return t.train("--reward_model", str(rm), method="var"), [str(rm), "num_labels=2", "one score",
                                                             "alignlab train-rm"]


@case("train: VAR without rewards")
def _(t):
    data = t.jsonl("pairs.jsonl", pair())
    return t.train(data=data, method="var"), [str(data), "pair 'pairs-1'", "reward_chosen", "--reward_model"]


@case("train: malformed data file")
def _(t):
    data = t.jsonl("pairs.jsonl", pair(), pair(), "[1, 2")
    return t.train(data=data), [f"{data}:3:", "not valid JSON"]


@case("train: output under a regular file")
def _(t):
    out = t.under_a_file()
    return t.train(out=out), [str(out), "is a file, not a directory", "choose another --out"]


# ---------------------------------------------------------------- alignlab train-rm

@case("train-rm: duplicate ids in the data")
def _(t):
    data = t.jsonl("pairs.jsonl", pair(id=1), pair(id=1))
    return t.train_rm(data=data), [f"{data}:2:", "field 'id'", "duplicate id '1'", "unique id"]


@case("train-rm: eval_fraction out of range")
def _(t):
    return t.train_rm("--eval_fraction", "1.5"), ["'eval_fraction' must be in (0, 1), got 1.5"]


@case("train-rm: model directory without model.safetensors")
def _(t):
    model = t.model_copy()
    (model / "model.safetensors").unlink()
    return t.train_rm(model=model), [str(model), "no *.safetensors weights", "re-save the model"]


@case("train-rm: output under a regular file")
def _(t):
    out = t.under_a_file()
    return t.train_rm(out=out), [str(out), "is a file, not a directory", "choose another --out"]


# ---------------------------------------------------------------- alignlab eval

@case("eval: gold reward model with two labels")
def _(t):
    gold = t.classifier(2)
    return t.eval(gold=gold), [str(gold), "num_labels=2", "one score", "alignlab train-rm"]


@case("eval: missing rejected in the test data")
def _(t):
    data = t.jsonl("test.jsonl", pair(), {"prompt": "p", "chosen": "c"})
    return t.eval(data=data), [f"{data}:2:", "field 'rejected'", "is missing"]


@case("eval: corrupt model.safetensors")
def _(t):
    model = t.model_copy()
    (model / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    return t.eval(model=model), [str(model / "model.safetensors"), "cannot load model weights",
                                 "download or save the model again"]


@case("eval: generation setting out of range")
def _(t):
    return t.eval("--top_p", "1.5"), ["--top_p must be in (0, 1], got 1.5"]


@case("eval: output under a regular file")
def _(t):
    out = t.under_a_file()
    return t.eval(out=out), [str(out), "is a file, not a directory", "choose another --out"]


# ---------------------------------------------------------------- alignlab run

@case("run: unknown method")
def _(t):
    return t.run("--methods", "dpo,dop"), ["unknown method 'dop'", "did you mean 'dpo'"]


@case("run: unknown study")
def _(t):
    return t.run("--study", "vra"), ["study 'vra'", "did you mean 'var'", "robustness, var"]


@case("run: VAR study without VAR")
def _(t):
    return t.run("--study", "var", "--methods", "dpo"), ["study 'var' compares VAR with DPO", "add var to 'methods'"]


@case("run: VAR race without GRPO steps")
def _(t):
    return t.run("--study", "var", "--race_grpo_steps", "0"), ["'race_grpo_steps' must be >= 1"]


@case("run: mistyped key")
def _(t):
    return t.run("--seeed", "1"), ["command line", "unknown key 'seeed'", "did you mean 'seed'"]


@case("run: YAML with a tab")
def _(t):
    config = t.file("study.yaml", "preset: tiny\ntraining:\n\tepochs: 1\n")
    return t.run("--config", str(config)), [f"{config}:3:", "invalid YAML", "never tabs"]


@case("run: real models without test data and gold RM")
def _(t):
    config = t.file("study.yaml", f"model: {t.tiny_model}\ntrain_data: {t.pairs}\n")
    return t.run("--config", str(config)), ["needs model, train_data, test_data and gold_rm together",
                                            "missing: test_data, gold_rm"]


@case("run: unknown training key in the YAML")
def _(t):
    config = t.file("study.yaml", "training:\n  lerning_rate: 0.001\n")
    return t.run("--config", str(config)), ["training", "unknown key 'lerning_rate'",
                                            "did you mean 'learning_rate'"]


@case("run: output under a regular file")
def _(t):
    out = t.under_a_file()
    return t.run(out=out), [str(out), "is a file, not a directory", "choose another --out"]


# ---------------------------------------------------------------- alignlab sweep

@case("sweep: neither a config file nor a grid")
def _(t):
    return t.sweep(None), ["needs a CONFIG.yaml with a grid or --grid"]


@case("sweep: unknown grid preset")
def _(t):
    return t.sweep(None, "--grid", "hitchiker"), ["grid_preset 'hitchiker'", "did you mean 'hitchhiker'"]


@case("sweep: mistyped hyper-parameter in the grid")
def _(t):
    return t.sweep("methods: [dpo]\ngrid:\n  dpo: {betta: [0.1]}\n"), [
        "grid.dpo has unknown key 'betta'", "did you mean 'beta'"]


@case("sweep: negative beta in the grid")
def _(t):
    return t.sweep("methods: [dpo]\ngrid:\n  dpo: {beta: [0.1, -0.5]}\n"), ["grid", "'beta' must be > 0, got -0.5"]


@case("sweep: grid value that is not a list")
def _(t):
    return t.sweep("methods: [dpo]\ngrid:\n  dpo: {beta: 0.1}\n"), ["grid.dpo.beta must be a non-empty list"]


@case("sweep: grid for a method that does not run")
def _(t):
    return t.sweep("methods: [dpo]\ngrid:\n  simpo: {gamma: [0.5]}\n"), ["grid names method 'simpo'"]


@case("sweep: learning rate out of range in the grid")
def _(t):
    return t.sweep("methods: [dpo]\ngrid:\n  all: {learning_rate: [0.001, 0]}\n"), ["'learning_rate' must be in (0, 1], got 0"]


@case("sweep: unknown executor")
def _(t):
    return t.sweep(None, "--grid", "small", "--executor", "dask"), ["executor 'dask'", "local, ray"]


@case("sweep: training value of the wrong type")
def _(t):
    return t.sweep("methods: [dpo]\ntraining: {epochs: two}\n"), ["config: training", "'epochs' must be an integer"]


@case("sweep: output under a regular file")
def _(t):
    out = t.under_a_file()
    return t.sweep(None, "--grid", "small", out=out), [str(out), "is a file, not a directory"]


# ---------------------------------------------------------------- the matrix

def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_clear_line_and_writes_nothing(name, tiny_model, pairs_file, tmp_path, capsys):
    t = Inputs(tmp_path, tiny_model, pairs_file)
    argv, needles = CASES[name](t)
    inputs_before = listing(t.dir)
    capsys.readouterr()
    started = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 20, "bad input must fail fast"
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("alignlab: error: "), err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert listing(t.outputs) == [], "an output was left behind"
    assert listing(t.dir) == inputs_before, "something was written beside the inputs"
    assert not list(tmp_path.glob("**/*.partial")) and not list(tmp_path.glob("**/.*.tmp"))

    with pytest.raises(AlignlabError):  # --debug: the error itself, with its traceback
        main(["--debug", *argv])
    assert listing(t.outputs) == [] and listing(t.dir) == inputs_before


def test_a_50_mb_line_is_refused_without_reading_it_whole(tmp_path):
    from alignlab.data.pairs import load_pairs

    path = tmp_path / "big.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"prompt": "' + b"a" * (50 << 20) + b'", "chosen": "a", "rejected": "b"}\n')
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(AlignlabError, match="longer than 16 MiB"):
        load_pairs(str(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 << 20, f"peak {peak >> 20} MiB"
    assert time.perf_counter() - started < 5


# ---------------------------------------------------------------- odd but fine

def test_tokenizer_without_a_pad_token_is_handled(tiny_model, pairs_file, tmp_path, caplog):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_model).pad_token is None
    caplog.set_level(logging.INFO)
    code = main(["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file),
                 "--out", str(tmp_path / "run"), "--max_length", "64", "--max_prompt_length", "32"])
    assert code == 0
    assert "tokenizer has no pad token; padding with '</s>'" in caplog.text
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_prompts_longer_than_the_maximum_are_truncated_by_the_rule_and_counted(tiny_model, tmp_path, caplog):
    from alignlab.data.pairs import load_pairs
    from alignlab.models.loading import load_tokenizer
    from alignlab.data.tokenise import PromptRenderer, tokenize_pairs

    long_prompt = "Tell me everything about the apple and the sky and the leaf, " * 20
    records = [pair(id=str(i), prompt=long_prompt if i < 3 else f"Short question {i}?") for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    caplog.set_level(logging.INFO)
    code = main(["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(data), "--out",
                 str(tmp_path / "run"), "--max_length", "64", "--max_prompt_length", "32", "--batch_size", "4"])
    assert code == 0
    reported = "3 prompts cut to their last tokens"
    assert reported in caplog.text
    assert reported in json.loads((tmp_path / "run" / "train_summary.json").read_text())["truncation"]
    # The documented rule: a long prompt keeps its last max_prompt_length tokens.
    tokenizer = load_tokenizer(str(tiny_model))
    pairs = load_pairs(str(data)).pairs
    [example], _ = tokenize_pairs(tokenizer, pairs[:1], 64, 32)
    full, _ = PromptRenderer(tokenizer).prompt_ids(pairs[0].prompt)
    assert len(full) > 32 and example.prompt_ids == full[-32:]
