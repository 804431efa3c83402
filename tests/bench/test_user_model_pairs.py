"""`alignlab bench --model --data` trains both sides on the same tokens: it picks pairs that neither
alignlab nor TRL truncates, checked here with the chat template applied directly (as TRL does)."""

import json

import pytest

from alignlab.bench.setups import USER_MODEL_MAX_LENGTH, untruncated_pairs
from alignlab.data.pairs import load_pairs
from alignlab.errors import AlignlabError
from alignlab.models.tiny import build_tiny_llama

WORDS = ["alpha", "beta", "gamma", "delta", "omega"]


def sentence(words: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(words))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("bench-model"), [sentence(50)], chat_template=True,
                                word_level=True))


def write_pairs(path, shapes):
    path.write_text("".join(json.dumps({"prompt": sentence(p), "chosen": sentence(c), "rejected": sentence(r, start=1)}) + "\n"
                            for p, c, r in shapes))
    return str(path)


def template_lengths(model, pair):
    """(prompt tokens, prompt + longer response tokens) from the chat template, as TRL tokenises."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = pair["prompt"] if isinstance(pair["prompt"], list) else [{"role": "user", "content": pair["prompt"]}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full = [len(tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": pair[key]}],
                                              tokenize=True, return_dict=True)["input_ids"])
            for key in ("chosen", "rejected")]
    return len(prompt_ids["input_ids"]), max(full)


def test_only_pairs_that_fit_untruncated_are_taken_in_file_order(model, tmp_path):
    shapes = [(10, 5, 5), (200, 5, 5), (20, 300, 5), (20, 5, 300), (100, 160, 40), (30, 30, 30), (5, 5, 5)]
    data = write_pairs(tmp_path / "pairs.jsonl", shapes)
    taken = untruncated_pairs(model, load_pairs(data).pairs, 3, USER_MODEL_MAX_LENGTH, data)
    assert [p["prompt"][-1]["content"] for p in taken] == [sentence(10), sentence(30), sentence(5)]
    for pair in taken:
        prompt, full = template_lengths(model, pair)
        assert prompt <= USER_MODEL_MAX_LENGTH // 2 and full <= USER_MODEL_MAX_LENGTH
    rows = [json.loads(line) for line in open(data)]
    for skipped in (rows[1], rows[2], rows[3], rows[4]):
        prompt, full = template_lengths(model, skipped)
        assert prompt > USER_MODEL_MAX_LENGTH // 2 or full > USER_MODEL_MAX_LENGTH


def test_too_few_fitting_pairs_is_refused_with_the_count(model, tmp_path):
    data = write_pairs(tmp_path / "long.jsonl", [(200, 5, 5), (10, 5, 5)])
    with pytest.raises(AlignlabError, match=r"long.jsonl: only 1 of 2 pairs fit 256 tokens.*--pairs"):
        untruncated_pairs(model, load_pairs(data).pairs, 2, USER_MODEL_MAX_LENGTH, data)
