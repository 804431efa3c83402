"""Micro-batches: every pair once per epoch, by count or by token budget, optionally length-grouped;
packing changes the layout of a step, not its loss."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.config import TrainConfig
from alignlab.errors import AlignlabError
from alignlab.training import train
from alignlab.training.batching import GROUP_BATCHES, micro_batches
from conftest import config_for


def batching_config(**settings) -> TrainConfig:
    return TrainConfig(model="m", data="d", out="o", **settings)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 400), min_size=1, max_size=300), batch_size=st.integers(1, 16),
       batch_tokens=st.sampled_from([0, 1, 300, 2048]), group=st.booleans(), epoch=st.integers(0, 3))
def test_every_pair_trains_once_per_epoch_in_batches_within_their_limit(sizes, batch_size, batch_tokens, group, epoch):
    config = batching_config(batch_size=batch_size, batch_tokens=batch_tokens, group_by_length=group)
    batches = micro_batches(sizes, config, epoch)
    assert sorted(i for batch in batches for i in batch) == list(range(len(sizes)))
    for batch in batches:
        if batch_tokens:  # a pair over the budget trains alone
            assert sum(sizes[i] for i in batch) <= batch_tokens or len(batch) == 1
        else:
            assert 1 <= len(batch) <= batch_size
    assert micro_batches(sizes, config, epoch) == batches  # seeded: a resumed run sees the same batches


def test_by_default_an_epoch_is_the_seeded_shuffle_cut_into_batch_size_pieces():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3 + 1)).tolist()
    batches = micro_batches([5] * 10, batching_config(batch_size=4, seed=3), epoch=1)
    assert batches == [order[:4], order[4:8], order[8:]]


def test_token_budget_fills_each_batch_with_consecutive_pairs_until_the_next_would_overflow():
    sizes = [100] * 8 + [500]
    batches = micro_batches(sizes, batching_config(batch_tokens=250), epoch=0)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0)).tolist()
    expected, current = [], []
    for i in order:  # by hand: 2 pairs of 100 fill 250; the 500-token pair alone
        if current and sum(sizes[j] for j in current) + sizes[i] > 250:
            expected.append(current)
            current = []
        current.append(i)
    assert batches == expected + [current]
    assert [len(b) for b in batches].count(1) >= 1 and max(len(b) for b in batches) == 2


def test_length_grouping_puts_similar_lengths_together():
    sizes = [(i * 37) % 500 + 1 for i in range(GROUP_BATCHES * 4)]
    config = batching_config(batch_size=4)
    spread = lambda batches: sum(max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in batches)
    grouped = micro_batches(sizes, batching_config(batch_size=4, group_by_length=True), epoch=0)
    assert spread(grouped) < spread(micro_batches(sizes, config, epoch=0)) / 10


def test_packing_changes_the_layout_not_the_loss(tiny_model, pairs_file, tmp_path):
    runs = {}
    for packing in (True, False):
        result = train(config_for(tiny_model, pairs_file, tmp_path / f"packing-{packing}", packing=packing,
                                  cache_dir=str(tmp_path / f"cache-{packing}"), max_length=128, epochs=2))
        runs[packing] = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert len(runs[True]) == len(runs[False]) > 2
    for packed, unpacked in zip(runs[True], runs[False]):
        assert packed["loss"] == pytest.approx(unpacked["loss"], abs=1e-5)
        assert packed["margin"] == pytest.approx(unpacked["margin"], abs=1e-5)


def test_batch_tokens_trains_the_token_budgets_micro_batches(tiny_model, pairs_file, tmp_path):
    config = config_for(tiny_model, pairs_file, tmp_path / "run", batch_tokens=120, logging_steps=1,
                        cache_dir=str(tmp_path / "cache"))
    result = train(config)
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    from alignlab.data.pairs import load_pairs
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.models.loading import load_tokenizer

    examples, _ = tokenize_pairs(load_tokenizer(str(tiny_model)), load_pairs(str(pairs_file)).pairs, 64, 32)
    sizes = [len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples]
    expected = micro_batches(sizes, config, 0)
    assert len(expected) != -(-len(sizes) // config.batch_size)  # the budget, not batch_size, cut them
    assert result.optimizer_steps == len(lines) == len(expected)
    assert [line["pairs_seen"] for line in lines] == list(torch.tensor([len(b) for b in expected]).cumsum(0))


def test_a_token_budget_too_small_for_one_step_is_refused_before_training(tiny_model, pairs_file, tmp_path):
    config = config_for(tiny_model, pairs_file, tmp_path / "run", batch_tokens=10**6, gradient_accumulation_steps=2)
    with pytest.raises(AlignlabError, match="fill 1 micro-batches of batch_tokens 1000000"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_grpo_refuses_pair_batching_settings():
    with pytest.raises(AlignlabError, match="grpo batches prompts"):
        TrainConfig(method="grpo", model="m", data="d", out="o", batch_tokens=512).validate()


def test_position_id_packing_trains_as_the_mask_packed_layout(tiny_model, pairs_file, tmp_path, monkeypatch):
    """The flash-attention path's layout, run here on sdpa (which reads the same position ids)."""
    from alignlab.data.layouts import PairLayout
    from alignlab.training import inputs, offline

    losses, used = {}, []
    monkeypatch.setattr(offline, "choose_layout", lambda *args: used.append(inputs.choose_layout(*args)) or used[-1])
    for layout in ("packed", "position-packed"):
        monkeypatch.setattr(inputs, "candidate_layout", lambda attention, packing, max_length: PairLayout(layout, 64))
        result = train(config_for(tiny_model, pairs_file, tmp_path / layout, cache_dir=str(tmp_path / layout)))
        losses[layout] = [json.loads(line)["loss"] for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [layout.name for layout in used] == ["packed", "position-packed"]  # neither fell back to padded
    assert losses["packed"] == pytest.approx(losses["position-packed"], abs=1e-5)


def test_an_attention_kernel_that_is_not_installed_is_refused_by_name(tiny_model, pairs_file, tmp_path):
    config = config_for(tiny_model, pairs_file, tmp_path / "run", attn_implementation="flash_attention_2")
    with pytest.raises(AlignlabError, match="attn_implementation 'flash_attention_2' cannot be used"):
        train(config)
    assert not (tmp_path / "run").exists()
