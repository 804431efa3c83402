"""Pair layouts: each response gets exactly the context it has alone, whatever shares its row."""

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel

from alignlab.data.layouts import PairLayout, collate_shared_prompt, pack_rows
from alignlab.data.pairs import PreferencePair
from alignlab.data.tokenise import tokenize_pairs
from alignlab.models.loading import batch_logps, load_causal_lm, load_tokenizer
from alignlab.training.inputs import candidate_layout, choose_layout

PAIRS = [PreferencePair(id="a", prompt=[{"role": "user", "content": "What color is the sky?"}],
                        chosen="The sky is blue.", rejected="No idea, sorry, I really could not say."),
         PreferencePair(id="b", prompt=[{"role": "user", "content": "Hi"}],
                        chosen="Hello to you too, my good friend.", rejected="Go away."),
         PreferencePair(id="c", prompt=[{"role": "user", "content": "Name a fruit, any fruit at all, please."}],
                        chosen="A plum.", rejected="Carrot, which is not a fruit but I like it."),
         PreferencePair(id="d", prompt=[{"role": "user", "content": "Is snow white?"}],
                        chosen="Yes.", rejected="Snow is green.")]
LAYOUTS = [PairLayout("shared-prompt"), PairLayout("packed", 64), PairLayout("packed", 4096),
           PairLayout("position-packed"), PairLayout("padded")]


def alone_logps(model, prompt_ids, response_ids) -> float:
    """log π(response | prompt) from one unpadded row with no mask: the reference computation."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(logprobs[len(prompt_ids) - 1 + t, token].item() for t, token in enumerate(response_ids))


def gpt2(tokenizer):
    """A tiny GPT-2: absolute position embeddings, a second architecture for the layouts."""
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2))


def gemma2(tokenizer):
    """A tiny Gemma-2: its logits are soft-capped after the output layer (tanh(z / 2) · 2 here)."""
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                           head_dim=16, max_position_embeddings=256, final_logit_softcapping=2.0,
                                           pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():  # logits large enough that the soft cap bends them
        model.get_output_embeddings().weight.mul_(50)
    return model


ARCHITECTURES = {"gpt2": gpt2, "gemma2": gemma2}


def saved_architecture(name, directory, tokenizer_source) -> str:
    """A seeded tiny model of architecture `name` with the tokenizer of `tokenizer_source`, saved."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    ARCHITECTURES[name](tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_packed_rows_hold_several_pairs_each_with_its_own_positions_and_mask(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    batch = collate_shared_prompt(examples, tokenizer.pad_token_id, row_tokens=4096)
    sizes = [len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples]
    assert batch["input_ids"].shape == (1, sum(sizes))  # every pair in one row, no padding
    mask = batch["attention_mask"][0, 0]
    for i, ex in enumerate(examples):
        p, c, r = len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)
        row = batch["response_rows"][i].item()
        assert row == 0 and batch["response_rows"][len(examples) + i].item() == 0
        start = batch["response_positions"][i, 0].item() - (p - 1)  # where this pair begins in the row
        span = slice(start, start + p + c + r)
        assert batch["input_ids"][0, span].tolist() == ex.prompt_ids + ex.chosen_ids + ex.rejected_ids
        assert batch["position_ids"][0, span].tolist() == list(range(p + c)) + list(range(p, p + r))
        last_rejected = start + p + c + r - 1
        assert mask[last_rejected, start:start + p].all() and not mask[last_rejected, start + p:start + p + c].any()
        assert mask[last_rejected].sum().item() == p + r  # nothing of any other pair
        assert mask[start + p + c - 1].sum().item() == p + c  # causal, within the pair
        for j, ids in ((i, ex.chosen_ids), (len(examples) + i, ex.rejected_ids)):
            assert batch["response_tokens"][j][batch["response_mask"][j].bool()].tolist() == ids
            assert batch["lengths"][j].item() == len(ids)


@pytest.mark.parametrize("architecture,attention", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa"),
                                                    ("gemma2", "eager")])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: f"{layout.name}-{layout.row_tokens}")
def test_every_layout_gives_each_response_its_log_prob_forwarded_alone(tiny_model, tmp_path, architecture,
                                                                      attention, layout):
    path = (str(tiny_model) if architecture == "llama"
            else saved_architecture(architecture, tmp_path / architecture, str(tiny_model)))
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path).eval()
    model.config._attn_implementation = attention
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    with torch.no_grad():
        got = batch_logps(model, layout.collate(examples, tokenizer.pad_token_id))
        chosen_only = batch_logps(model, layout.collate(examples, tokenizer.pad_token_id, include_rejected=False))
    expected_chosen = [alone_logps(model, e.prompt_ids, e.chosen_ids) for e in examples]
    expected = expected_chosen + [alone_logps(model, e.prompt_ids, e.rejected_ids) for e in examples]
    assert got.tolist() == pytest.approx(expected, abs=1e-4)
    assert chosen_only[:len(examples)].tolist() == pytest.approx(expected_chosen, abs=1e-4)


def test_the_output_layer_maps_only_the_positions_that_predict_response_tokens(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model)).eval()
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    batch = PairLayout("packed", 4096).collate(examples, tokenizer.pad_token_id)
    mapped = []
    handle = model.get_output_embeddings().register_forward_hook(lambda module, args, out: mapped.append(args[0].shape))
    with torch.no_grad():
        batch_logps(model, batch)
        model(input_ids=batch["input_ids"][:, :3])
    handle.remove()
    response_tokens = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    assert batch["input_ids"].numel() > response_tokens  # the prompts are not mapped
    assert mapped == [(1, response_tokens, model.config.hidden_size),
                      (1, 3, model.config.hidden_size)]  # the restriction ends with the pass


def test_a_model_with_no_output_layer_to_restrict_is_gathered_from_its_full_logits(tiny_model, monkeypatch):
    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model)).eval()
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: None)
    with torch.no_grad():
        got = batch_logps(model, PairLayout("packed", 4096).collate(examples, tokenizer.pad_token_id))
    expected = ([alone_logps(model, e.prompt_ids, e.chosen_ids) for e in examples]
                + [alone_logps(model, e.prompt_ids, e.rejected_ids) for e in examples])
    assert got.tolist() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("attention,packing,expected", [("sdpa", True, PairLayout("packed", 64)),
                                                        ("eager", False, PairLayout("shared-prompt")),
                                                        ("flash_attention_2", True, PairLayout("position-packed")),
                                                        ("flash_attention_2", False, PairLayout("padded"))])
def test_the_layout_follows_the_attention_implementation(attention, packing, expected):
    """flash-attention takes no custom mask but reads sequence boundaries from position ids."""
    assert candidate_layout(attention, packing, max_length=128) == expected


def test_sdpa_models_get_the_packed_layout_after_the_check(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model))
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    assert choose_layout(model, examples, tokenizer.pad_token_id, "cpu", True, 128) == PairLayout("packed", 64)


def test_a_model_that_ignores_position_ids_falls_back_to_padded_batches(tiny_model, caplog):
    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model)).train()
    with torch.no_grad():  # an untrained tiny model barely depends on position: make it depend
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.mul_(30)
    forward = model.forward
    model.forward = lambda *args, position_ids=None, **kwargs: forward(*args, **kwargs)
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    with caplog.at_level(logging.WARNING):
        assert choose_layout(model, examples, tokenizer.pad_token_id, "cpu", True, 128) == PairLayout("padded")
    assert "padded pair batches" in caplog.text
    assert model.training  # the check restores the mode it found


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40), st.integers(0, 600))
def test_pack_rows_places_every_pair_once_within_capacity_first_fit(sizes, row_tokens):
    rows = pack_rows(sizes, row_tokens)
    capacity = max([row_tokens, *sizes])
    assert sorted(i for row in rows for i in row) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in row) for row in rows]
    assert all(load <= capacity for load in loads)
    # First fit: an item opened a later row only because it fitted in no earlier one, so no two rows
    # could have been one.
    assert all(loads[a] + loads[b] > capacity for a in range(len(rows)) for b in range(a + 1, len(rows)))
