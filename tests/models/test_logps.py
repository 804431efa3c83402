"""Chunked log-probs from the final hidden states (alignlab.models.logps) against the full-logits
path autograd differentiates itself: values, gradients (and torch's numerical gradcheck), tied
embeddings, a bias, bf16 autocast, the models that must fall back, and a DPO step end to end."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from alignlab.data.layouts import PairLayout
from alignlab.data.pairs import load_pairs
from alignlab.data.tokenise import tokenize_pairs
from alignlab.models import logps as logps_module
from alignlab.models.loading import batch_logps, load_causal_lm, load_tokenizer, sequence_logps
from alignlab.models.logps import final_states, linear_token_logps
from alignlab.objectives.registry import get_method
from alignlab.training.inputs import pair_batch
from alignlab.training.reference import compute_sequence_logps
from conftest import config_for


def full_logps(hidden, weight, bias, targets, temperature=1.0):
    """The plain path: every logit, log_softmax, pick the target."""
    logits = F.linear(hidden, weight, bias).float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)


def random_head(tokens, hidden_size, vocabulary, bias=True, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocabulary, hidden_size, generator=generator, dtype=dtype).mul(0.3).requires_grad_()
    b = torch.randn(vocabulary, generator=generator, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(vocabulary, (tokens,), generator=generator)
    return hidden, weight, b, targets


@pytest.mark.parametrize("tokens,hidden_size,vocabulary,chunk", [(37, 16, 101, 8), (5, 3, 7, 2), (64, 32, 500, 64),
                                                                  (10, 8, 50, 1000)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_full_log_softmax(tokens, hidden_size, vocabulary, chunk, bias, temperature):
    hidden, weight, b, targets = random_head(tokens, hidden_size, vocabulary, bias)
    upstream = torch.randn(tokens, generator=torch.Generator().manual_seed(1))  # a loss that weights each token
    expected = full_logps(hidden, weight, b, targets, temperature)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [hidden, weight] + ([b] if bias else []))
    got = linear_token_logps(hidden, weight, b, targets, temperature, chunk=chunk)
    got_grads = torch.autograd.grad((got * upstream).sum(), [hidden, weight] + ([b] if bias else []))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    for name, g, e in zip(["hidden", "weight", "bias"], got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5, msg=name)


def test_the_chunk_boundary_does_not_matter():
    hidden, weight, b, targets = random_head(23, 8, 40)
    results = []
    for chunk in (1, 4, 7, 23, 100):  # 7 does not divide 23
        logps = linear_token_logps(hidden, weight, b, targets, chunk=chunk)
        results.append((logps, *torch.autograd.grad(logps.sum(), [hidden, weight, b])))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)


def test_gradcheck_in_float64():
    hidden, weight, b, targets = random_head(5, 3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h, w, bb: linear_token_logps(h, w, bb, targets, 0.8, chunk=2),
                                    (hidden, weight, b))


def test_a_frozen_weight_gets_no_gradient_and_the_hidden_states_still_do():
    hidden, weight, _, targets = random_head(9, 4, 11, bias=False)
    weight.requires_grad_(False)
    linear_token_logps(hidden, weight, None, targets, chunk=4).sum().backward()
    expected, = torch.autograd.grad(full_logps(hidden, weight, None, targets).sum(), [hidden])
    assert weight.grad is None
    torch.testing.assert_close(hidden.grad, expected, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_matches_the_autocast_output_layer():
    # The model's output layer under autocast multiplies in bf16 and the log-probs come from its
    # bf16 logits made float32: the chunks compute the same, to bf16 rounding of the matmul.
    hidden, weight, b, targets = random_head(40, 16, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.log_softmax(F.linear(hidden, weight, b).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
        expected_grads = torch.autograd.grad(expected.sum(), [hidden, weight, b])
        got = linear_token_logps(hidden, weight, b, targets, compute_dtype=torch.bfloat16, chunk=16)
        got_grads = torch.autograd.grad(got.sum(), [hidden, weight, b])
    float32 = full_logps(hidden, weight, b, targets)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)  # the same bf16 logits
    assert (got - float32).abs().max() > 1e-3  # and they are bf16's, not float32's
    for g, e in zip(got_grads, expected_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=2e-2, rtol=2e-2)


# ------------------------------------------------------------------ through a model

@pytest.fixture
def examples(tiny_model, pairs_file):
    tokenizer = load_tokenizer(str(tiny_model))
    return tokenize_pairs(tokenizer, load_pairs(str(pairs_file)).pairs[:4], 64, 32)[0]


def with_full_logits(monkeypatch):
    monkeypatch.setattr(logps_module, "chunkable_head", lambda model: None)


def grads_of_logps(model, batch):
    model.zero_grad()
    logps = batch_logps(model, batch)
    logps.sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", [PairLayout("padded"), PairLayout("packed", 128)], ids=lambda layout: layout.name)
@pytest.mark.parametrize("tied", [False, True])
def test_a_model_gives_the_full_logits_values_and_gradients_tied_embeddings_too(tiny_model, examples, monkeypatch,
                                                                               layout, tied):
    model = load_causal_lm(str(tiny_model)).train()
    if tied:  # one shared matrix: its gradient is the embedding's and the output layer's, counted once each
        model.lm_head.weight = model.model.embed_tokens.weight
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    batch = layout.collate(examples, 0)
    monkeypatch.setattr(logps_module, "CHUNK_LOGITS_BYTES", 4 * model.config.vocab_size * 7)  # 7-position chunks
    got, got_grads = grads_of_logps(model, batch)
    with_full_logits(monkeypatch)
    expected, expected_grads = grads_of_logps(model, batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_no_tensor_of_the_full_logits_shape_is_kept_for_the_backward_pass(tiny_model, examples, monkeypatch):
    model = load_causal_lm(str(tiny_model)).train()
    batch = PairLayout("padded").collate(examples, 0)
    tokens = int(batch["loss_mask"][:, 1:].sum())
    vocabulary = model.config.vocab_size
    assert tokens > model.config.hidden_size  # so that the weights are smaller than [tokens, vocabulary]
    monkeypatch.setattr(logps_module, "CHUNK_LOGITS_BYTES", 4 * vocabulary * 16)

    def largest_saved():
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        return max(sizes)

    assert largest_saved() < tokens * vocabulary
    with_full_logits(monkeypatch)
    assert largest_saved() >= tokens * vocabulary  # the full path does keep one: the check can fail


@pytest.mark.parametrize("use_peft", [False, True])
def test_a_dpo_step_gives_the_same_loss_and_gradients_with_and_without_chunks(tiny_model, pairs_file, tmp_path,
                                                                              examples, monkeypatch, use_peft):
    from alignlab.training.policy import as_reference, prepare_policy

    method = get_method("dpo")
    params = dict(method.resolve({}))
    layout = PairLayout("packed", 128)
    config = config_for(tiny_model, pairs_file, tmp_path, use_peft=use_peft, lora_r=4, lora_dropout=0.0)

    def step():
        torch.manual_seed(3)  # the same LoRA initialisation both times
        model = prepare_policy(load_causal_lm(str(tiny_model)), config)
        with as_reference(model):
            reference = compute_sequence_logps(model, examples, 0, 4, "cpu", layout)
        with torch.no_grad():  # a policy away from the reference, so the loss is not log 2 both ways
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.05 * torch.randn_like(parameter))
        model.train()
        batch = layout.collate(examples, 0)
        batch["index"] = torch.arange(len(examples))
        loss = method.batch_loss(pair_batch(model, batch, method, reference, None, torch.zeros(len(examples),
                                                                                            dtype=torch.long)),
                                 **params)
        loss.backward()
        chunked = logps_module.chunkable_head(model) is model.get_output_embeddings()
        return chunked, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    monkeypatch.setattr(logps_module, "CHUNK_LOGITS_BYTES", 4 * 384 * 5)
    chunked, loss, grads = step()
    with_full_logits(monkeypatch)
    full, expected_loss, expected_grads = step()
    assert chunked and not full  # a LoRA policy's output layer is the base's plain nn.Linear: chunked too
    assert abs(loss.item() - math.log(2)) > 1e-3
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-6)
    assert grads.keys() == expected_grads.keys() and grads
    if use_peft:
        assert all("lora_" in name for name in grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_through_a_model_stays_close_to_the_full_logits(tiny_model, examples, monkeypatch):
    model = load_causal_lm(str(tiny_model)).eval()
    batch = PairLayout("packed", 128).collate(examples, 0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = batch_logps(model, batch)
        with_full_logits(monkeypatch)
        expected = batch_logps(model, batch)
    with torch.no_grad():
        full_precision = batch_logps(model, batch)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
    assert (got - full_precision).abs().max() > 1e-3  # autocast did compute the chunks in bf16


# ------------------------------------------------------------------ models that fall back

def test_a_model_that_changes_its_logits_after_the_output_layer_falls_back_and_says_why(tiny_model, examples,
                                                                                         caplog):
    from transformers import LlamaForCausalLM

    class Doubled(LlamaForCausalLM):  # nothing in its config says so: found by the forward's output
        def forward(self, *args, **kwargs):
            output = super().forward(*args, **kwargs)
            output.logits = 2 * output.logits
            return output

    model = Doubled.from_pretrained(str(tiny_model)).eval()
    batch = PairLayout("padded").collate(examples, 0)
    rows, positions = batch["loss_mask"][:, 1:].nonzero(as_tuple=True)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="alignlab.models.logps"):
        got = final_states(model, rows, positions, input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).token_logps(batch["input_ids"][rows, positions + 1])
        again = final_states(model, rows, positions, input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"])
        logits = 2 * LlamaForCausalLM.forward(model, input_ids=batch["input_ids"],
                                              attention_mask=batch["attention_mask"]).logits
    expected = torch.log_softmax(logits[rows, positions].float(), -1).gather(
        -1, batch["input_ids"][rows, positions + 1][:, None]).squeeze(-1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert again.head is None  # decided once
    assert [r.getMessage() for r in caplog.records].count(
        "log-probs from full logits for Doubled: its forward changes what the output layer returns") == 1


def test_softcapping_and_an_adapted_output_layer_fall_back(tiny_model, pairs_file, tmp_path, caplog):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from alignlab.training.policy import prepare_policy

    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    config = config_for(tiny_model, pairs_file, tmp_path, use_peft=True, lora_r=4, lora_modules_to_save=["lm_head"])
    saved_head = prepare_policy(load_causal_lm(str(tiny_model)), config)
    plain = load_causal_lm(str(tiny_model))
    with caplog.at_level(logging.INFO, logger="alignlab.models.logps"):
        assert logps_module.chunkable_head(gemma) is None
        assert logps_module.chunkable_head(saved_head) is None
        assert logps_module.chunkable_head(plain) is plain.lm_head
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "final_logit_softcapping" in messages and "ModulesToSaveWrapper" in messages


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_training_takes_the_chunked_path_in_the_dtype_its_autocast_gives(tiny_model, pairs_file, tmp_path,
                                                                         monkeypatch, precision):
    from alignlab.training import train

    dtypes = []
    real_apply = logps_module.LinearLogSoftmax.apply

    def spy(hidden, weight, bias, targets, temperature, compute_dtype, chunk):
        dtypes.append((torch.is_grad_enabled(), compute_dtype))
        return real_apply(hidden, weight, bias, targets, temperature, compute_dtype, chunk)

    monkeypatch.setattr(logps_module.LinearLogSoftmax, "apply", spy)
    train(config_for(tiny_model, pairs_file, tmp_path, mixed_precision=precision, max_steps=1))
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    # the policy's step (with gradients) and the reference pass (without) under the run's autocast; the
    # layout check before training (choose_layout) runs without it
    assert {dtype for grad, dtype in dtypes if grad} == {expected} and (False, expected) in dtypes
