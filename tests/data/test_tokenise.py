"""Prompt formats, response masks and the documented truncation rule."""

import json

import pytest
import torch

from alignlab.data.pairs import PreferencePair
from conftest import make_pairs
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_tokenizer
from alignlab.data.tokenise import collate_pairs, tokenize_pairs

MULTI_TURN = [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "What color is the sky?"}]


def pair(prompt=MULTI_TURN, chosen="The sky is blue.", rejected="No idea."):
    return PreferencePair(id="x", prompt=prompt, chosen=chosen, rejected=rejected)


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_plain_format_renders_turns_and_masks_only_the_response(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    assert tokenizer.pad_token == "</s>"  # no pad token: EOS pads
    [ex], report = tokenize_pairs(tokenizer, [pair()], max_length=256, max_prompt_length=128)
    assert decode(tokenizer, ex.prompt_ids) == (
        "<s>\n\nHuman: Hi there.\n\nAssistant: Hello!\n\nHuman: What color is the sky?\n\nAssistant:")
    assert decode(tokenizer, ex.chosen_ids) == " The sky is blue.</s>"
    assert decode(tokenizer, ex.rejected_ids) == " No idea.</s>"
    assert report.prompts_truncated == report.responses_truncated == 0


def test_chat_template_response_is_what_the_template_adds(tiny_chat_model):
    tokenizer = load_tokenizer(str(tiny_chat_model))
    [ex], _ = tokenize_pairs(tokenizer, [pair()], max_length=256, max_prompt_length=128)
    assert decode(tokenizer, ex.prompt_ids) == (
        "<|user|>Hi there.</s><|assistant|>Hello!</s><|user|>What color is the sky?</s><|assistant|>")
    assert decode(tokenizer, ex.chosen_ids) == "The sky is blue.</s>"


def test_truncation_keeps_prompt_end_and_response_start_and_counts_both(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    long_response = "The sky is blue. " * 20
    [full], _ = tokenize_pairs(tokenizer, [pair(chosen=long_response)], max_length=1000, max_prompt_length=999)
    [cut], report = tokenize_pairs(tokenizer, [pair(chosen=long_response)], max_length=30, max_prompt_length=10)
    assert cut.prompt_ids == full.prompt_ids[-10:]
    assert cut.chosen_ids == full.chosen_ids[:20]
    assert cut.rejected_ids == full.rejected_ids  # it fits
    assert (report.prompts_truncated, report.responses_truncated, report.examples) == (1, 1, 1)


def test_collated_batch_is_chosen_rows_then_rejected_rows_with_response_mask(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    pairs = [pair(), pair(prompt=[{"role": "user", "content": "Hi"}], chosen="Hello to you too, friend.")]
    examples, _ = tokenize_pairs(tokenizer, pairs, 256, 128)
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    rows = [(e.prompt_ids, e.chosen_ids) for e in examples] + [(e.prompt_ids, e.rejected_ids) for e in examples]
    assert batch["input_ids"].shape == (4, max(len(p) + len(r) for p, r in rows))
    for row, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        assert batch["input_ids"][row, :n].tolist() == prompt + response
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        masked = batch["input_ids"][row][batch["loss_mask"][row].bool()].tolist()
        assert masked == response
        assert batch["lengths"][row].item() == len(response)
    only_chosen = collate_pairs(examples, tokenizer.pad_token_id, include_rejected=False)
    assert only_chosen["input_ids"].shape[0] == 2
    assert torch.equal(only_chosen["lengths"], batch["lengths"][:2])


HH_PROMPT = [{"role": "user", "content": "\n\nHuman: What color is the sky?\n\nAssistant:"}]


def test_raw_prompts_are_the_texts_as_the_tokenizer_encodes_them(tiny_chat_model):
    tokenizer = load_tokenizer(str(tiny_chat_model))  # has a chat template: raw_prompts must not use it
    [ex], _ = tokenize_pairs(tokenizer, [pair(HH_PROMPT, " Blue.", " Green.")], 256, 128, raw_prompts=True)
    assert ex.prompt_ids == tokenizer(HH_PROMPT[0]["content"])["input_ids"]
    assert ex.chosen_ids == tokenizer(" Blue.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert decode(tokenizer, ex.prompt_ids + ex.rejected_ids) == HH_PROMPT[0]["content"] + " Green.</s>"


def test_raw_prompts_keep_the_special_tokens_the_tokenizer_adds(tiny_model):
    from tokenizers.processors import TemplateProcessing

    tokenizer = load_tokenizer(str(tiny_model))
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    [ex], _ = tokenize_pairs(tokenizer, [pair(HH_PROMPT, " Blue.", " Green.")], 256, 128, raw_prompts=True)
    assert ex.prompt_ids[0] == bos and decode(tokenizer, ex.prompt_ids) == "<s>" + HH_PROMPT[0]["content"]
    assert bos not in ex.chosen_ids


def test_raw_prompts_refuse_a_conversation(tiny_model):
    with pytest.raises(AlignlabError, match=r"conversation of 3 messages \(user, assistant, user\)"):
        tokenize_pairs(load_tokenizer(str(tiny_model)), [pair()], 256, 128, raw_prompts=True)


def test_cached_token_ids_are_the_tokenizers_and_a_second_call_reads_them(tiny_chat_model, tmp_path, monkeypatch):
    from alignlab.data import tokenise
    from alignlab.data.pairs import load_pairs
    from alignlab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_chat_model))
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(6)))
    pairs = load_pairs(str(source)).pairs
    expected, report = tokenise.tokenize_pairs(tokenizer, pairs, 24, 8)
    assert report.prompts_truncated and report.responses_truncated  # the cache must carry every count
    assert report.pairs_truncated
    first, first_report = tokenise.cached_tokenize_pairs(tokenizer, "tok-a", pairs, 24, 8, False, tmp_path)
    monkeypatch.setattr(tokenise, "tokenize_pairs", lambda *args, **kwargs: pytest.fail("tokenised again"))
    second, second_report = tokenise.cached_tokenize_pairs(tokenizer, "tok-a", pairs, 24, 8, False, tmp_path)
    assert first == second == expected
    assert vars(first_report) == vars(second_report) == vars(report)
    for changed in (dict(fingerprint="tok-b"), dict(max_length=25), dict(pairs=pairs[:5])):
        arguments = dict(fingerprint="tok-a", pairs=pairs, max_length=24) | changed
        with pytest.raises(pytest.fail.Exception, match="tokenised again"):
            tokenise.cached_tokenize_pairs(tokenizer, arguments["fingerprint"], arguments["pairs"],
                                           arguments["max_length"], 8, False, tmp_path)


def test_chat_templated_prompts_are_noted_once_for_trl_users(tiny_chat_model, caplog):
    """TRL encodes a plain-text prompt as it is; alignlab templates it: said once, with the way out."""
    import logging

    from alignlab.data.pairs import PreferencePair
    from alignlab.data.tokenise import note_chat_template, tokenize_pairs
    from alignlab.models.loading import load_tokenizer

    note_chat_template.cache_clear()
    caplog.set_level(logging.INFO, logger="alignlab.data.tokenise")
    pair = PreferencePair(id="p", prompt=[{"role": "user", "content": "Hi?"}], chosen="Hello.", rejected="No.")
    for _ in range(2):
        tokenize_pairs(load_tokenizer(str(tiny_chat_model)), [pair], 64)
    assert caplog.text.count("--raw_prompts uses text prompts verbatim") == 1
