"""What keys the training caches (issue 16): the rewards cache changes with everything that changes
a reward model's scores (max_length cuts the text, raw_prompts renders it, mixed precision computes
it), and the reference caches with the policy's hub revision."""

from __future__ import annotations

import torch

from alignlab.config import TrainConfig
from alignlab.data.layouts import PairLayout
from alignlab.data.pairs import load_pairs
from alignlab.models.tiny import build_tiny_classifier
from alignlab.training import inputs
from alignlab.training.inputs import pair_rewards


def test_the_rewards_cache_is_keyed_by_max_length_and_raw_prompts(tiny_model, pairs_file, tmp_path):
    reward_model = build_tiny_classifier(tmp_path / "rm", tiny_model, seed=3)
    pairs = load_pairs(str(pairs_file)).pairs[:4]
    cache = tmp_path / "cache"

    def score(**settings):
        config = TrainConfig(model=str(tiny_model), data=str(pairs_file), out="unused", method="var",
                             reward_model=str(reward_model), batch_size=4, **settings)
        pair_rewards(config, pairs, cache, "cpu")
        return sorted(path.name for path in cache.glob("rewards-*.safetensors"))

    first = score(max_length=64, max_prompt_length=32)
    assert len(first) == 1 and score(max_length=64, max_prompt_length=32) == first  # the same settings: a hit
    # 12 tokens cut the scored texts: other scores, so another key.
    assert len(score(max_length=12, max_prompt_length=8)) == 2
    assert len(score(max_length=64, max_prompt_length=32, raw_prompts=True)) == 3


def test_rewards_scored_under_autocast_are_not_read_by_a_float32_run(tiny_model, pairs_file, tmp_path):
    """A run scores under its mixed precision's autocast (pair_tables); a float32 run after a bf16 one
    gets float32 scores, as a run with an empty cache would."""
    reward_model = build_tiny_classifier(tmp_path / "rm", tiny_model, seed=3)
    pairs = load_pairs(str(pairs_file)).pairs[:4]

    def scores(cache, mixed_precision):
        config = TrainConfig(model=str(tiny_model), data=str(pairs_file), out="unused", method="var",
                             reward_model=str(reward_model), batch_size=4, mixed_precision=mixed_precision)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
            return pair_rewards(config, pairs, cache, "cpu")["chosen"]

    half = scores(tmp_path / "shared", "bf16")
    alone = scores(tmp_path / "fresh", "no")
    assert not torch.equal(half, alone)  # bf16 changes these scores: the test can tell the two apart
    assert torch.equal(scores(tmp_path / "shared", "no"), alone)


def test_the_reference_keys_carry_the_policys_revision_only(monkeypatch, tmp_path):
    fingerprinted = []
    monkeypatch.setattr(inputs, "model_fingerprint",
                        lambda name, cache_dir, revision=None: fingerprinted.append((name, revision)) or name)
    monkeypatch.setattr(inputs, "cached_rows", lambda cache_dir, kind, keys, names, compute, chunk: ({}, 0))
    config = TrainConfig(model="org/policy", revision="v1", data="d", out="o")
    inputs.reference_logps(config, [], 0, tmp_path, "cpu", policy=None, layout=PairLayout("padded"))
    config.reference_model = "org/reference"  # another model: the policy's revision is not its own
    inputs.reference_logps(config, [], 0, tmp_path, "cpu", policy=None, layout=PairLayout("padded"))
    assert fingerprinted == [("org/policy", "v1"), ("org/reference", None)]
