"""LoRA training (use_peft): only the adapter trains, the reference is the base model (the policy
with its adapter off), and the saved adapter, reloaded or merged, is the trained model."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from alignlab.data.layouts import PairLayout
from alignlab.data.pairs import load_pairs
from alignlab.data.tokenise import tokenize_pairs
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.training import grpo as grpo_module
from alignlab.training import inputs as inputs_module
from alignlab.training import offline as offline_module
from alignlab.training import train
from alignlab.training.policy import prepare_policy
from conftest import config_for
from test_grpo import grpo_config
from test_offline import reward_model, unbatched_logps

LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)


@pytest.fixture(scope="module")
def lora_run(tiny_model, pairs_file, tmp_path_factory):
    """Three epochs of LoRA DPO saved with save_merged, and the trained model as it was in memory."""
    out = tmp_path_factory.mktemp("lora") / "run"
    trained = {}
    real_save = offline_module.save_run

    def keep_model(run_dir, accelerator, model, *args):
        trained["model"] = accelerator.unwrap_model(model)
        real_save(run_dir, accelerator, model, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offline_module, "save_run", keep_model)
        result = train(config_for(tiny_model, pairs_file, out, epochs=3, save_merged=True,
                                  cache_dir=str(out.parent / "cache"), **LORA))
    return {"out": out, "result": result, "model": trained["model"].eval()}


def examples_of(model_dir, pairs_file):
    return tokenize_pairs(load_tokenizer(str(model_dir)), load_pairs(str(pairs_file)).pairs, 64, 32)[0]


def test_lora_dpo_lowers_the_loss_and_trains_only_the_adapter(lora_run, tiny_model):
    metrics = [json.loads(line) for line in (lora_run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the adapter's B starts at zero
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.1 and metrics[-1]["margin"] > 1.0
    base = load_file(tiny_model / "model.safetensors")
    trained = lora_run["model"].state_dict()
    frozen = {name.replace("base_model.model.", "").replace(".base_layer", ""): tensor
              for name, tensor in trained.items() if "lora_" not in name}
    assert frozen.keys() == base.keys()
    assert all(torch.equal(frozen[name], base[name]) for name in base)  # bit-identical after training
    adapter = load_file(lora_run["out"] / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_A" in name or "lora_B" in name for name in adapter)  # nothing of the base
    b_matrices = [t for name, t in adapter.items() if "lora_B" in name]
    # "all-linear": the 7 projections of each of the 2 layers, not the output head.
    assert len(b_matrices) == 14 and all(t.abs().max() > 0 for t in b_matrices)
    assert not (lora_run["out"] / "model" / "model.safetensors").exists()


def test_saved_adapter_and_merged_weights_reload_to_the_trained_model(lora_run, pairs_file):
    examples = examples_of(lora_run["out"] / "model", pairs_file)
    trained = unbatched_logps(lora_run["model"], examples)
    for saved in ("model", "model-merged"):
        reloaded = unbatched_logps(load_causal_lm(str(lora_run["out"] / saved)).eval(), examples)
        for expected, got in zip(trained, reloaded):
            assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-5), saved


def test_merged_weights_are_the_base_plus_the_scaled_adapter_product(lora_run, tiny_model):
    """Second implementation of the merge: W + (alpha / r) · B A from the saved files."""
    base = load_file(tiny_model / "model.safetensors")
    merged = load_file(lora_run["out"] / "model-merged" / "model.safetensors")
    adapter = load_file(lora_run["out"] / "model" / "adapter_model.safetensors")
    assert merged.keys() == base.keys()
    for name in base:
        key = "base_model.model." + name.removesuffix(".weight")
        if f"{key}.lora_A.weight" in adapter:
            update = (LORA["lora_alpha"] / LORA["lora_r"]) * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
            assert torch.allclose(merged[name], base[name] + update, atol=1e-6), name
        else:
            assert torch.equal(merged[name], base[name]), name


def test_lora_reference_is_the_base_model_with_the_adapter_off(tiny_model, pairs_file, tmp_path):
    config = config_for(tiny_model, pairs_file, tmp_path / "run", **LORA)
    config.validate()
    policy = prepare_policy(load_causal_lm(str(tiny_model)), config)
    torch.manual_seed(5)
    with torch.no_grad():  # a trained adapter: on, the policy is no longer the base model
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    examples = examples_of(tiny_model, pairs_file)
    computed = inputs_module.reference_logps(config, examples, load_tokenizer(str(tiny_model)).pad_token_id,
                                             tmp_path / "cache", "cpu", policy, layout=PairLayout("padded"))
    reference = computed.logps
    base_chosen, base_rejected = unbatched_logps(load_causal_lm(str(tiny_model)).eval(), examples)
    assert not computed.hit
    assert torch.allclose(reference["chosen"].double(), torch.tensor(base_chosen, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(reference["rejected"].double(), torch.tensor(base_rejected, dtype=torch.float64), atol=1e-4)
    adapted_chosen, _ = unbatched_logps(policy.eval(), examples)
    assert max(abs(a - b) for a, b in zip(adapted_chosen, base_chosen)) > 0.1  # the adapter does change them
    # The key is the base model's: a full fine-tune of the same base reads the same cached log-probs.
    full = config_for(tiny_model, pairs_file, tmp_path / "full")
    full.validate()
    assert inputs_module.reference_logps(full, examples, load_tokenizer(str(tiny_model)).pad_token_id,
                                         tmp_path / "cache", "cpu", load_causal_lm(str(tiny_model)),
                                         PairLayout("padded")).hit


def test_lora_snapshots_hold_the_adapter(tiny_model, pairs_file, tmp_path):
    train(config_for(tiny_model, pairs_file, tmp_path / "run", max_steps=2, snapshot_steps=2, **LORA))
    snapshot = tmp_path / "run" / "snapshots" / "step-000002"
    assert (snapshot / "adapter_config.json").exists() and not (snapshot / "model.safetensors").exists()
    final = load_file(tmp_path / "run" / "model" / "adapter_model.safetensors")
    saved = load_file(snapshot / "adapter_model.safetensors")
    assert saved.keys() == final.keys() and all(torch.equal(saved[k], final[k]) for k in final)
    assert load_causal_lm(str(snapshot)).config.vocab_size == load_causal_lm(str(tiny_model)).config.vocab_size


def test_grpo_lora_keeps_one_model_and_its_reference_is_the_base(tiny_model, pairs_file, tmp_path, monkeypatch):
    rm = reward_model(tmp_path / "rm", tiny_model)
    loads = []
    real_load = grpo_module.load_causal_lm
    monkeypatch.setattr(grpo_module, "load_causal_lm", lambda path, *a, **k: loads.append(path) or real_load(path, *a, **k))
    train(grpo_config(tiny_model, pairs_file, tmp_path / "run", rm, max_steps=3, learning_rate=2e-2,
                      params={"group_size": 2, "max_new_tokens": 6}, **LORA))
    assert loads == [str(tiny_model)]  # the policy only: no reference copy
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the adapter starts at zero
    # With the adapter left on the "reference" would be the policy itself and the KL 0 at every step.
    assert metrics[-1]["kl"] > 1e-4
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").exists()
