"""The shared-prompt pair layout: each response gets exactly the context it has on its own."""

import logging

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from alignlab.data.pairs import PreferencePair
from alignlab.models.loading import load_causal_lm, load_tokenizer, shared_prompt_logps
from alignlab.data.tokenise import collate_shared_prompt, tokenize_pairs
from alignlab.training.inputs import shared_prompt_works

PAIRS = [PreferencePair(id="a", prompt=[{"role": "user", "content": "What color is the sky?"}],
                        chosen="The sky is blue.", rejected="No idea, sorry, I really could not say."),
         PreferencePair(id="b", prompt=[{"role": "user", "content": "Hi"}],
                        chosen="Hello to you too, my good friend.", rejected="Go away.")]


def alone_logps(model, prompt_ids, response_ids) -> float:
    """log π(response | prompt) from one unpadded row with no mask: the reference computation."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(logprobs[len(prompt_ids) - 1 + t, token].item() for t, token in enumerate(response_ids))


def test_one_row_per_pair_with_prompt_once_and_rejected_blind_to_chosen(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    batch = collate_shared_prompt(examples, tokenizer.pad_token_id)
    widths = [len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples]
    assert batch["input_ids"].shape == (2, max(widths))
    for row, ex in enumerate(examples):
        p, c, r = len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)
        assert batch["input_ids"][row, :p + c + r].tolist() == ex.prompt_ids + ex.chosen_ids + ex.rejected_ids
        assert batch["position_ids"][row, :p + c + r].tolist() == list(range(p + c)) + list(range(p, p + r))
        mask = batch["attention_mask"][row, 0]
        last_rejected = p + c + r - 1
        assert mask[last_rejected, :p].all() and not mask[last_rejected, p:p + c].any()
        assert mask[last_rejected, p + c:p + c + r].all()
        assert mask[p + c - 1, :p + c].all() and not mask[p + c - 1, p + c:].any()  # causal
        for j, ids in ((row, ex.chosen_ids), (2 + row, ex.rejected_ids)):
            tokens = batch["response_tokens"][j][batch["response_mask"][j].bool()].tolist()
            assert tokens == ids and batch["lengths"][j].item() == len(ids)
            positions = batch["response_positions"][j, :len(ids)]
            assert positions[0].item() == p - 1  # the first response token is predicted by the prompt's end
            assert batch["input_ids"][row, positions[1:]].tolist() == ids[:-1]


def gpt2_model(directory, tokenizer_source):
    """A tiny GPT-2: absolute position embeddings, a second architecture for the layout."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2,
                               n_head=2)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("architecture,attention", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_shared_prompt_logps_equal_each_response_forwarded_alone(tiny_model, tmp_path, architecture, attention):
    path = str(tiny_model) if architecture == "llama" else gpt2_model(tmp_path / "gpt2", str(tiny_model))
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path).eval()
    model.config._attn_implementation = attention
    examples, _ = tokenize_pairs(tokenizer, PAIRS, 256, 128)
    with torch.no_grad():
        got = shared_prompt_logps(model, collate_shared_prompt(examples, tokenizer.pad_token_id))
    expected = [alone_logps(model, e.prompt_ids, e.chosen_ids) for e in examples] + \
               [alone_logps(model, e.prompt_ids, e.rejected_ids) for e in examples]
    assert got.tolist() == pytest.approx(expected, abs=1e-4)
    assert shared_prompt_works(model, examples, tokenizer.pad_token_id, "cpu")


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
        assert not shared_prompt_works(model, examples, tokenizer.pad_token_id, "cpu")
    assert "padded pair batches" in caplog.text
    assert model.training  # the check restores the mode it found
