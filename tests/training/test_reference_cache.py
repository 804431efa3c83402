"""The reference pass of a run covers only the pairs it trains on, cached per pair so that a longer run
computes only what a shorter one did not (issue 31, item 2); a sweep's warm-up stores, under a run's
keys, exactly what that run would compute: its device, mixed precision and layout (item 4)."""

import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
import time

import pytest
import torch

from alignlab.data.layouts import PairLayout
from alignlab.data.pairs import load_pairs
from alignlab.data.tokenise import tokenize_pairs
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.study.sweep import warm_reference_cache
from alignlab.training import inputs as inputs_module
from alignlab.training import offline as offline_module
from alignlab.training import train

from conftest import REPO, config_for, make_pairs


def tokens(example) -> tuple:
    return tuple(example.prompt_ids), tuple(example.chosen_ids), tuple(example.rejected_ids)


def record_reference_pass(monkeypatch) -> list[tuple]:
    """The pairs (as token ids) each reference forward pass is given, in order."""
    computed = []
    real = inputs_module.compute_sequence_logps

    def recording(model, examples, *args, **kwargs):
        computed.extend(tokens(e) for e in examples)
        return real(model, examples, *args, **kwargs)

    monkeypatch.setattr(inputs_module, "compute_sequence_logps", recording)
    return computed


def record_training(monkeypatch, pairs: int = 16) -> dict:
    """The indices of the training pairs (of `pairs`) the loop's batches hold, with the reference log-probs
    each used; the held-out pairs' batches, whose tables are of another length, are left out."""
    seen = {}
    real = offline_module.pair_batch

    def recording(model, batch, method, reference, *args):
        if len(reference["chosen"]) == pairs:
            for i in batch["index"].tolist():
                seen[i] = (reference["chosen"][i].item(), reference["rejected"][i].item())
        return real(model, batch, method, reference, *args)

    monkeypatch.setattr(offline_module, "pair_batch", recording)
    return seen


def examples_of(model, pairs_file):
    return tokenize_pairs(load_tokenizer(str(model)), load_pairs(str(pairs_file)).pairs, 64, 32)[0]


def summary_of(run) -> dict:
    return json.loads((run / "train_summary.json").read_text())


def cached_rows(cache) -> dict[str, tuple[float, float]]:
    with sqlite3.connect(cache / "reference-logps.sqlite") as db:
        return {key: struct.unpack("<2f", value) for key, value in db.execute("SELECT key, value FROM rows")}


# 16 pairs in micro-batches of 4: an epoch is 4 steps (4 per step with accumulation 1, 8 with 2).
@pytest.mark.parametrize("settings, pairs", [
    ({"max_steps": 2}, 8),                                         # 2 steps × 4 pairs
    ({"max_steps": 1, "gradient_accumulation_steps": 2}, 8),       # 1 step × 2 micro-batches × 4
    ({"epochs": 0.5}, 8),                                          # half of 4 steps: 2 × 4
    ({"epochs": 3, "max_steps": 1}, 4),                            # capped in the first epoch
    ({"epochs": 2, "max_steps": 5}, 16),                           # epoch 1 whole, 1 step of epoch 2
])
def test_the_reference_pass_computes_exactly_the_pairs_the_run_trains_on(
        settings, pairs, tiny_model, pairs_file, tmp_path, monkeypatch):
    computed, trained = record_reference_pass(monkeypatch), record_training(monkeypatch)
    result = train(config_for(tiny_model, pairs_file, tmp_path / "run", **settings))
    examples = examples_of(tiny_model, pairs_file)
    assert len(computed) == len(set(computed)) == pairs  # each once
    assert set(computed) == {tokens(examples[i]) for i in trained}
    assert result.reference_cache_hit is False
    summary = summary_of(tmp_path / "run")
    assert (summary["reference_pairs"], summary["reference_pairs_computed"]) == (pairs, pairs)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_two_processes_train_on_the_pairs_the_main_one_computed(tiny_model, pairs_file, tmp_path):
    """2 processes × micro-batches of 2 pairs: a step takes 4 pairs, 2 steps 8. The main process computes
    them (the other reads them); a pair trained without its reference value (NaN) would stop the run."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29521"]
    run = subprocess.run([*launch, "-m", "alignlab", "train", "--method", "dpo", "--model", str(tiny_model),
                          "--data", str(pairs_file), "--out", str(tmp_path / "run"), "--batch_size", "2",
                          "--max_steps", "2", "--max_length", "64", "--max_prompt_length", "32",
                          "--cache_dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = summary_of(tmp_path / "run")
    assert (summary["optimizer_steps"], summary["pairs_trained"]) == (2, 8)
    assert (summary["reference_pairs"], summary["reference_pairs_computed"]) == (8, 8)
    assert math.isfinite(summary["final_loss"])
    assert len(cached_rows(tmp_path / "cache")) == 8


def test_a_longer_run_computes_only_the_pairs_a_shorter_one_did_not(tiny_model, pairs_file, tmp_path, monkeypatch):
    computed, trained = record_reference_pass(monkeypatch), record_training(monkeypatch)
    cache = tmp_path / "cache"
    short = train(config_for(tiny_model, pairs_file, tmp_path / "short", max_steps=1, cache_dir=str(cache)))
    assert len(computed) == 4 and short.reference_cache_hit is False
    computed.clear()
    # The same seed draws the same order: the longer run's first micro-batch is the short run's.
    longer = train(config_for(tiny_model, pairs_file, tmp_path / "longer", max_steps=3, cache_dir=str(cache)))
    assert len(computed) == 8 and longer.reference_cache_hit is False
    summary = summary_of(tmp_path / "longer")
    assert (summary["reference_pairs"], summary["reference_pairs_computed"]) == (12, 8)
    assert len(cached_rows(cache)) == 12
    used_with_cache = dict(trained)
    computed.clear()
    again = train(config_for(tiny_model, pairs_file, tmp_path / "again", max_steps=3, cache_dir=str(cache)))
    assert computed == [] and again.reference_cache_hit is True
    assert summary_of(tmp_path / "again")["reference_pairs_computed"] == 0
    assert again.final_loss == longer.final_loss

    # Without the cache: the same values, to the float rounding of other batch neighbours (the cached 4
    # were computed in their own batch), and as a second implementation (one pair at a time) gives them.
    trained.clear()
    fresh = train(config_for(tiny_model, pairs_file, tmp_path / "fresh", max_steps=3, cache_dir=str(tmp_path / "c2")))
    assert trained.keys() == used_with_cache.keys()
    assert torch.allclose(torch.tensor([used_with_cache[i] for i in sorted(trained)]),
                          torch.tensor([trained[i] for i in sorted(trained)]), atol=1e-5)
    assert fresh.final_loss == pytest.approx(longer.final_loss, rel=1e-5)
    from test_offline import unbatched_logps

    examples = examples_of(tiny_model, pairs_file)
    chosen, rejected = unbatched_logps(load_causal_lm(str(tiny_model)).eval(), [examples[i] for i in sorted(trained)])
    assert torch.allclose(torch.tensor([used_with_cache[i] for i in sorted(trained)], dtype=torch.float64),
                          torch.tensor(list(zip(chosen, rejected)), dtype=torch.float64), atol=1e-4)


def test_cached_values_are_the_computed_ones_bit_for_bit_and_unused_pairs_are_nan(tiny_model, pairs_file, tmp_path):
    config = config_for(tiny_model, pairs_file, tmp_path / "unused")
    examples = examples_of(tiny_model, pairs_file)
    model = load_causal_lm(str(tiny_model))
    pad = load_tokenizer(str(tiny_model)).pad_token_id
    needed = [1, 5, 6, 11, 12]
    computed = inputs_module.reference_logps(config, examples, pad, tmp_path / "cache", "cpu", model,
                                             PairLayout("padded"), needed)
    read = inputs_module.reference_logps(config, examples, pad, tmp_path / "cache", "cpu", model,
                                         PairLayout("padded"), needed)
    assert (computed.pairs, computed.cached, read.pairs, read.cached) == (5, 0, 5, 5) and read.hit
    for name in ("chosen", "rejected"):
        assert torch.equal(read.logps[name][needed], computed.logps[name][needed])
        assert torch.isfinite(read.logps[name][needed]).all()
        unused = [i for i in range(len(examples)) if i not in needed]
        assert torch.isnan(read.logps[name][unused]).all()  # a run that used one would fail loudly


def test_time_to_first_step_runs_from_the_start_to_the_first_optimizer_step(tiny_model, pairs_file, tmp_path):
    started = time.perf_counter()
    train(config_for(tiny_model, pairs_file, tmp_path / "run", epochs=3))
    wall = time.perf_counter() - started
    summary = summary_of(tmp_path / "run")
    # After the setup (its seconds are part of it), before the end; 12 steps: the first is not all of training.
    assert summary["setup_seconds"] < summary["time_to_first_step_seconds"] < wall
    assert summary["time_to_first_step_seconds"] < summary["setup_seconds"] + summary["train_seconds"]


def mixed_precision_config(tiny_model, pairs_file, heldout_file, out, cache, **settings):
    return config_for(tiny_model, pairs_file, out, mixed_precision="bf16", cache_dir=str(cache),
                      eval_data=str(heldout_file), eval_strategy="epoch", **settings)


@pytest.fixture
def heldout_file(tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({**p, "prompt": p["prompt"] + " Held out."}) + "\n" for p in make_pairs(6)))
    return path


def test_the_warm_up_stores_what_a_mixed_precision_run_computes(tiny_model, pairs_file, heldout_file, tmp_path,
                                                                 monkeypatch):
    warmed, alone, full = tmp_path / "warmed", tmp_path / "alone", tmp_path / "float32"
    config = mixed_precision_config(tiny_model, pairs_file, heldout_file, tmp_path / "run", warmed, max_steps=2)
    warm_reference_cache([config])
    computed = record_reference_pass(monkeypatch)
    run = train(config)
    assert computed == [] and run.reference_cache_hit is True  # 8 trained pairs and the 6 held out, all cached
    assert summary_of(tmp_path / "run")["reference_pairs"] == 8 + 6

    # The run on its own, from an empty cache: the same keys, and the same values bit for bit.
    train(mixed_precision_config(tiny_model, pairs_file, heldout_file, tmp_path / "alone-run", alone, max_steps=2))
    assert cached_rows(warmed) == cached_rows(alone)
    # The test can tell: float32 values (the warm-up on the CPU without autocast) are others, under other keys.
    train(config_for(tiny_model, pairs_file, tmp_path / "fp32-run", cache_dir=str(full), max_steps=2,
                     eval_data=str(heldout_file), eval_strategy="epoch"))
    assert not cached_rows(full).keys() & cached_rows(warmed).keys()
    difference = (torch.tensor(sorted(cached_rows(full).values())) - torch.tensor(sorted(cached_rows(warmed).values())))
    assert difference.abs().max() > 1e-3


def test_the_warm_up_covers_the_pairs_of_every_run_once(tiny_model, pairs_file, heldout_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    configs = [mixed_precision_config(tiny_model, pairs_file, heldout_file, tmp_path / f"run-{seed}-{beta}", cache,
                                      max_steps=1, seed=seed, params={"beta": beta})
               for seed in (0, 1, 2) for beta in (0.1, 0.5)]
    computed = record_reference_pass(monkeypatch)
    warm_reference_cache(configs)
    recorded = record_training(monkeypatch)
    for config in configs[::2]:  # one of each seed: the betas draw alike
        assert train(config).reference_cache_hit is True
    trained = {tokens(e) for i, e in enumerate(examples_of(tiny_model, pairs_file)) if i in recorded}
    heldout = {tokens(e) for e in examples_of(tiny_model, heldout_file)}
    assert 4 < len(trained) <= 12  # three seeds' first micro-batches of 4 pairs: more than one's
    assert len(computed) == len(set(computed)) == len(trained) + 6
    assert set(computed) == trained | heldout
