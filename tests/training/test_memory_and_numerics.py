"""Gradient checkpointing, mixed precision and dropout: the policy trains as `config` says, and
the DPO loss at step 0 is log 2 (policy == reference) whenever dropout is off."""

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open

from alignlab.config import RewardModelConfig
from alignlab.data.pairs import load_pairs
from alignlab.data.tokenise import collate_pairs, tokenize_pairs
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm, load_tokenizer, sequence_logps
from alignlab.training import train
from alignlab.training.policy import disable_dropout, prepare_policy
from alignlab.training.reward_model import train_reward_model
from conftest import config_for


def first_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_backward(model, batch) -> dict[str, torch.Tensor]:
    """Parameter gradients of the summed response log-probs, and how often layer 0's MLP ran forward
    (a hook on the layer itself stays outside transformers' checkpoint; one inside it sees the recompute)."""
    calls = []
    [mlp] = [module for name, module in model.named_modules() if name.endswith("layers.0.mlp")]
    hook = mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum().backward()
    hook.remove()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("use_peft", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, pairs_file, tmp_path, use_peft):
    examples, _ = tokenize_pairs(load_tokenizer(str(tiny_model)), load_pairs(str(pairs_file)).pairs[:4], 64, 32)
    batch = collate_pairs(examples, 0)
    grads, calls = {}, {}
    for checkpointing in (False, True):
        config = config_for(tiny_model, pairs_file, tmp_path, gradient_checkpointing=checkpointing,
                            use_peft=use_peft, lora_r=4, lora_dropout=0.0)
        torch.manual_seed(3)  # the same LoRA A initialisation both times
        model = prepare_policy(load_causal_lm(str(tiny_model)), config)
        with torch.no_grad():  # a non-zero B, so LoRA's A matrices get gradients too
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.1)
        grads[checkpointing], calls[checkpointing] = one_backward(model, batch)
    assert calls == {False: 1, True: 2}  # checkpointing recomputes the layer in the backward pass
    assert grads[True].keys() == grads[False].keys() and grads[False]
    if use_peft:
        assert all("lora_" in name for name in grads[True])
    for name, grad in grads[False].items():
        assert torch.allclose(grads[True][name], grad, atol=1e-5, rtol=0), name


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="fp16 autocast needs a GPU (refused on the CPU, below)"))])
def test_mixed_precision_trains_float32_weights(tiny_model, pairs_file, tmp_path, precision):
    train(config_for(tiny_model, pairs_file, tmp_path / precision, mixed_precision=precision, epochs=3))
    train(config_for(tiny_model, pairs_file, tmp_path / "full", epochs=3))
    losses = [m["loss"] for m in first_metrics(tmp_path / precision)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.1
    # The reference pass runs under the same autocast: at step 0 policy == reference exactly.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    with safe_open(tmp_path / precision / "model" / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F32"}  # master weights
    # Autocast did compute in half precision: the losses move off the float32 run's.
    full = [m["loss"] for m in first_metrics(tmp_path / "full")]
    assert max(abs(a - b) for a, b in zip(losses, full)) > 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's refusal")
def test_fp16_is_refused_on_the_cpu_where_accelerate_would_ignore_it(tiny_model, pairs_file, tmp_path):
    with pytest.raises(AlignlabError, match="fp16 needs a GPU"):
        train(config_for(tiny_model, pairs_file, tmp_path / "run", mixed_precision="fp16"))
    assert not (tmp_path / "run").exists()


def test_mixed_precision_refuses_half_precision_weights(tiny_model, pairs_file, tmp_path):
    with pytest.raises(AlignlabError, match="mixed_precision bf16.*dtype bfloat16"):
        config_for(tiny_model, pairs_file, tmp_path, mixed_precision="bf16", dtype="bfloat16").validate()


def test_save_merged_needs_peft_and_reward_models_refuse_peft(tiny_model, pairs_file, tmp_path):
    with pytest.raises(AlignlabError, match="save_merged"):
        config_for(tiny_model, pairs_file, tmp_path, save_merged=True).validate()
    with pytest.raises(AlignlabError, match="train-rm: use_peft"):
        train_reward_model(RewardModelConfig(model=str(tiny_model), data=str(pairs_file), out=str(tmp_path / "rm"),
                                             use_peft=True))
    assert not (tmp_path / "rm").exists()


@pytest.fixture
def dropout_model(tiny_model, tmp_path):
    """The tiny Llama with attention dropout 0.5 (Llama has no nn.Dropout modules: its attention
    passes `attention_dropout` to the functional dropout)."""
    copy = shutil.copytree(tiny_model, tmp_path / "dropout-model")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    return copy


def test_disable_dropout_zeroes_modules_and_attention_rates(dropout_model):
    model = load_causal_lm(str(dropout_model))
    model.model.extra = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Dropout2d(0.2))
    attention = model.model.layers[0].self_attn
    assert attention.attention_dropout == 0.5
    assert disable_dropout(model) == 2 + 2  # two layers' attention, two dropout modules
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    assert model.model.extra[0].p == 0.0 and model.model.extra[1].p == 0.0
    assert model.config.attention_dropout == 0.5  # the saved model keeps its own config
    # Off means off: two training-mode forwards agree.
    ids = torch.arange(3, 19).view(2, 8)
    model.train()
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_dropout_off_makes_the_first_dpo_loss_log_2(dropout_model, pairs_file, tmp_path):
    train(config_for(dropout_model, pairs_file, tmp_path / "off", max_steps=1))
    train(config_for(dropout_model, pairs_file, tmp_path / "on", max_steps=1, disable_dropout=False))
    assert first_metrics(tmp_path / "off")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first_metrics(tmp_path / "off")[0]["margin"] == 0.0
    # Dropout in the policy's forward but not in the reference pass: the margin is noise at step 0
    # (small here: the random tiny model's attention is near uniform, so dropping half of it moves
    # log-probs by ~1e-3; the loss moves off log 2 by ~7e-5, 70× the tolerance above).
    on = first_metrics(tmp_path / "on")[0]
    assert abs(on["loss"] - math.log(2)) > 2e-5 and abs(on["margin"]) > 1e-4


def lora_dropout_rates(model) -> dict[str, float]:
    """Each LoRA layer's input-dropout rate, in PEFT's dropout module or fused into A."""
    rates = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_dropout"):
            dropout, projection = module.lora_dropout["default"], module.lora_A["default"]
            rates[name] = getattr(projection, "p", None) or getattr(dropout, "p", 0.0)
    return rates


@pytest.mark.parametrize("disable", [True, False])
def test_disable_dropout_turns_lora_dropout_off_as_trl_does(tiny_model, pairs_file, tmp_path, disable):
    """TRL's trainers zero every dropout module after get_peft_model, LoRA's too: the oracle is TRL's
    own disable_dropout_in_model applied to PEFT's model, against alignlab's prepared policy."""
    peft = pytest.importorskip("peft")
    trl_utils = pytest.importorskip("trl.trainer.utils")
    from alignlab.training.policy import lora_config

    config = config_for(tiny_model, pairs_file, tmp_path, use_peft=True, lora_r=4, lora_dropout=0.3,
                        disable_dropout=disable)
    ours = prepare_policy(load_causal_lm(str(tiny_model)), config).train()
    base = load_causal_lm(str(tiny_model))
    theirs = peft.get_peft_model(base, lora_config(config, base))
    if disable:
        trl_utils.disable_dropout_in_model(theirs)
    assert lora_dropout_rates(ours) == lora_dropout_rates(theirs)
    assert set(lora_dropout_rates(ours).values()) == ({0.0} if disable else {0.3})
    with torch.no_grad():  # B is zero at step 0: make the adapter matter, so its dropout shows
        for name, parameter in ours.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
        ids = torch.arange(3, 19).view(2, 8)
        assert torch.equal(ours(input_ids=ids).logits, ours(input_ids=ids).logits) == disable
