"""LoRA adapter directories (a use_peft run's model/) load wherever a model does: the base model
they name, checked as any checkpoint is, with the adapter merged in; refused when not safetensors
or not fitting the base; and their cache fingerprint covers the base's weights."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from alignlab.cache import model_fingerprint
from alignlab.cli import main
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.tiny import build_tiny_classifier, build_tiny_llama
from alignlab.training import train
from conftest import config_for, corpus


@pytest.fixture(scope="module")
def adapter_run(tiny_model, pairs_file, tmp_path_factory):
    """Two LoRA DPO steps on a private copy of the tiny model (tests here edit the base)."""
    root = tmp_path_factory.mktemp("adapter")
    base = shutil.copytree(tiny_model, root / "base")
    train(config_for(base, pairs_file, root / "run", max_steps=2, learning_rate=2e-2, use_peft=True, lora_r=4,
                     save_merged=True, cache_dir=str(root / "cache")))
    return {"base": base, "run": root / "run"}


def adapter_copy(adapter_run, directory, **config_changes):
    copy = shutil.copytree(adapter_run["run"] / "model", directory)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, **config_changes}))
    return copy


def test_adapter_dir_loads_its_base_with_the_adapter_merged(adapter_run):
    config = json.loads((adapter_run["run"] / "model" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(adapter_run["base"].resolve())  # absolute: loads from anywhere
    model = load_causal_lm(str(adapter_run["run"] / "model"))
    assert not hasattr(model, "peft_config")  # a plain model, merged for inference
    merged = load_file(adapter_run["run"] / "model-merged" / "model.safetensors")
    assert all(torch.equal(tensor, merged[name]) for name, tensor in model.state_dict().items())
    base = load_file(adapter_run["base"] / "model.safetensors")
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    tokenizer = load_tokenizer(str(adapter_run["run"] / "model"))
    assert tokenizer.get_vocab() == load_tokenizer(str(adapter_run["base"])).get_vocab()


def test_eval_command_takes_an_adapter_dir(adapter_run, pairs_file, tmp_path):
    build_tiny_classifier(tmp_path / "gold", adapter_run["base"])
    results = {}
    for saved in ("model", "model-merged"):
        out = tmp_path / f"eval-{saved}"
        assert main(["eval", "--model", str(adapter_run["run"] / saved), "--data", str(pairs_file), "--gold_rm",
                     str(tmp_path / "gold"), "--sft", str(adapter_run["base"]), "--out", str(out),
                     "--max_new_tokens", "6", "--limit", "4"]) == 0
        results[saved] = pq.read_table(out / "samples.parquet").to_pydict()
    assert results["model"] == results["model-merged"]  # the same merged weights
    assert max(results["model"]["kl"]) > 0  # the adapter moved the model off its base


def test_fingerprint_of_an_adapter_covers_its_base_weights(adapter_run, tmp_path):
    base = shutil.copytree(adapter_run["base"], tmp_path / "base")
    adapter = adapter_copy(adapter_run, tmp_path / "adapter", base_model_name_or_path=str(base))
    before = model_fingerprint(str(adapter), tmp_path / "cache")
    tensors = load_file(base / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1  # the adapter's files are untouched
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    assert model_fingerprint(str(adapter), tmp_path / "cache") != before
    assert model_fingerprint(str(adapter), tmp_path / "cache") == model_fingerprint(str(adapter), tmp_path / "cache")


def test_adapter_without_safetensors_weights_is_refused(adapter_run, tmp_path):
    adapter = adapter_copy(adapter_run, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(AlignlabError, match="adapter_model.safetensors.*only as safetensors"):
        load_causal_lm(str(adapter))


def test_adapter_on_another_base_is_refused(adapter_run, tmp_path):
    wider = build_tiny_llama(tmp_path / "wider", corpus(), hidden_size=64)
    adapter = adapter_copy(adapter_run, tmp_path / "adapter", base_model_name_or_path=str(wider))
    with pytest.raises(AlignlabError, match=r"does not fit its base model.*size mismatch"):
        load_causal_lm(str(adapter))


def test_adapter_whose_base_moved_is_refused(adapter_run, tmp_path):
    adapter = adapter_copy(adapter_run, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "gone"))
    with pytest.raises(AlignlabError, match="base model .*gone is not there"):
        load_causal_lm(str(adapter))


def adapter_cycle(adapter_run, tmp_path, names: list[str]) -> list:
    """Copies of the adapter, each naming the next as its base and the last the first: the cycle's paths."""
    paths = [tmp_path / name for name in names]
    for path, base in zip(paths, paths[1:] + paths[:1]):
        adapter_copy(adapter_run, path, base_model_name_or_path=str(base))
    return paths


FOLLOW_BASES = {"load": lambda adapter, cache_dir: load_causal_lm(adapter), "fingerprint": model_fingerprint}


@pytest.mark.parametrize("follow", list(FOLLOW_BASES))
@pytest.mark.parametrize("names", [["own"], ["a", "b"]], ids=["self", "a-b-a"])
def test_adapters_whose_bases_form_a_cycle_are_one_error_not_a_recursion(adapter_run, tmp_path, follow, names):
    cycle = adapter_cycle(adapter_run, tmp_path, names)
    with pytest.raises(AlignlabError) as caught:
        FOLLOW_BASES[follow](str(cycle[0]), tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and f"{cycle[-1].resolve() / 'adapter_config.json'}:" in message
    assert " -> ".join(str(path.resolve()) for path in cycle + cycle[:1]) in message


def test_cli_refuses_an_adapter_cycle_in_one_line(adapter_run, pairs_file, tmp_path, capsys):
    start, _ = adapter_cycle(adapter_run, tmp_path, ["a", "b"])
    code = main(["train", "--method", "dpo", "--model", str(start), "--data", str(pairs_file), "--out",
                 str(tmp_path / "run"), "--max_length", "64", "--max_prompt_length", "32", "--batch_size", "4"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("alignlab: error: ") and "cycle" in lines[0], lines
