"""The trainer on tiny locally built models: margins, caching, determinism, every method, CLI."""

import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from alignlab.training import inputs as inputs_module
from alignlab.training import offline as offline_module
from alignlab.cli import main
from alignlab.data.pairs import load_pairs
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.tiny import build_tiny_classifier
from alignlab.data.tokenise import tokenize_pairs
from alignlab.training import train

from conftest import REPO, config_for


def unbatched_logps(model, examples) -> tuple[list[float], list[float]]:
    """Second implementation: one unpadded sequence at a time, full log-softmax, explicit loop."""
    chosen, rejected = [], []
    with torch.no_grad():
        for ex in examples:
            for response, sink in ((ex.chosen_ids, chosen), (ex.rejected_ids, rejected)):
                ids = torch.tensor([ex.prompt_ids + response])
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
                total = 0.0
                for t in range(len(ex.prompt_ids), ids.shape[1]):
                    total += logprobs[t - 1, ids[0, t]].item()
                sink.append(total)
    return chosen, rejected


def record_model_loads(monkeypatch) -> list[str]:
    """The paths of the causal LMs training loads, in order: the policy (offline) and a separate reference (inputs)."""
    loads = []
    real_load = offline_module.load_causal_lm
    for module in (offline_module, inputs_module):
        monkeypatch.setattr(module, "load_causal_lm", lambda path, *a, **k: loads.append(path) or real_load(path, *a, **k))
    return loads


def cached_reference_rows(cache: Path) -> dict[str, tuple[float, float]]:
    """The reference cache's rows as stored (reference-logps.sqlite: key, float32 chosen and rejected, checksum)."""
    with sqlite3.connect(cache / "reference-logps.sqlite") as db:
        return {key: tuple(struct.unpack("<2f", value)) for key, value in db.execute("SELECT key, value FROM rows")}


def assert_rows_are(rows, chosen: list[float], rejected: list[float]) -> None:
    """The cached (chosen, rejected) rows are those pairs' values, as a set (rows are keyed by content, not order)."""
    stored = sorted(rows.values())
    expected = sorted(zip(chosen, rejected))
    assert len(stored) == len(expected)
    assert torch.allclose(torch.tensor(stored, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                          atol=1e-4)


def mean_margin(policy, reference, examples) -> float:
    pc, pr = unbatched_logps(policy, examples)
    rc, rr = unbatched_logps(reference, examples)
    return sum((a - b) - (c - d) for a, b, c, d in zip(pc, rc, pr, rr)) / len(examples)


def test_dpo_steps_raise_chosen_minus_rejected_margin(tiny_model, pairs_file, tmp_path):
    result = train(config_for(tiny_model, pairs_file, tmp_path / "run", epochs=2))
    tokenizer = load_tokenizer(str(tiny_model))
    examples, _ = tokenize_pairs(tokenizer, load_pairs(str(pairs_file)).pairs, 64, 32)
    policy = load_causal_lm(str(tmp_path / "run" / "model")).eval()
    reference = load_causal_lm(str(tiny_model)).eval()
    # Policy == reference at the start, so the margin starts at exactly 0.
    margin = mean_margin(policy, reference, examples)
    assert margin > 1.0, margin
    assert result.optimizer_steps == 8
    assert result.final_margin > 0


def test_reference_cache_matches_fresh_computation_and_skips_reference_model(
        tiny_model, pairs_file, tmp_path, monkeypatch):
    loads = record_model_loads(monkeypatch)
    cache = tmp_path / "cache"
    first = train(config_for(tiny_model, pairs_file, tmp_path / "a", cache_dir=str(cache)))
    assert first.reference_cache_hit is False
    assert loads == [str(tiny_model)]  # the policy, which also computes the reference log-probs

    tokenizer = load_tokenizer(str(tiny_model))
    examples, _ = tokenize_pairs(tokenizer, load_pairs(str(pairs_file)).pairs, 64, 32)
    assert_rows_are(cached_reference_rows(cache), *unbatched_logps(load_causal_lm(str(tiny_model)).eval(), examples))

    loads.clear()
    monkeypatch.setattr(inputs_module, "compute_sequence_logps", lambda *a, **k: pytest.fail("recomputed"))
    second = train(config_for(tiny_model, pairs_file, tmp_path / "b", cache_dir=str(cache)))
    assert second.reference_cache_hit is True
    assert loads == [str(tiny_model)]  # the policy only
    assert second.final_loss == pytest.approx(first.final_loss, rel=1e-6)


def test_a_damaged_reference_row_is_recomputed_not_used(tiny_model, pairs_file, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = train(config_for(tiny_model, pairs_file, tmp_path / "a", cache_dir=str(cache)))
    rows = cached_reference_rows(cache)
    damaged = sorted(rows)[3]
    with sqlite3.connect(cache / "reference-logps.sqlite") as db:  # bits flipped in one row's values
        db.execute("UPDATE rows SET value = ? WHERE key = ?", (struct.pack("<2f", rows[damaged][0] + 5.0,
                                                                            rows[damaged][1]), damaged))
    second = train(config_for(tiny_model, pairs_file, tmp_path / "b", cache_dir=str(cache)))
    assert second.reference_cache_hit is False
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert (summary["reference_pairs"], summary["reference_pairs_computed"]) == (16, 1)
    assert "1 rows do not match their checksum" in caplog.text
    assert cached_reference_rows(cache)[damaged] == pytest.approx(rows[damaged], abs=1e-5)  # alone in its batch
    assert second.final_loss == pytest.approx(first.final_loss, rel=1e-6)


def test_an_unreadable_reference_cache_file_is_rebuilt(tiny_model, pairs_file, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = train(config_for(tiny_model, pairs_file, tmp_path / "a", cache_dir=str(cache)))
    rows = cached_reference_rows(cache)
    (cache / "reference-logps.sqlite").write_bytes(b"not a database" * 100)
    second = train(config_for(tiny_model, pairs_file, tmp_path / "b", cache_dir=str(cache)))
    assert second.reference_cache_hit is False and "is unreadable" in caplog.text
    assert cached_reference_rows(cache) == rows  # the same batches: bit for bit
    assert second.final_loss == first.final_loss


def test_training_is_deterministic_on_cpu(tiny_model, pairs_file, tmp_path):
    a = train(config_for(tiny_model, pairs_file, tmp_path / "a", method="simpo"))
    b = train(config_for(tiny_model, pairs_file, tmp_path / "b", method="simpo"))
    assert a.final_loss == b.final_loss
    wa = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    wb = (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    assert wa == wb


def test_gradient_accumulation_matches_the_larger_batch(tiny_model, pairs_file, tmp_path):
    whole = train(config_for(tiny_model, pairs_file, tmp_path / "a", batch_size=8))
    accumulated = train(config_for(tiny_model, pairs_file, tmp_path / "b", batch_size=4,
                                   gradient_accumulation_steps=2))
    assert whole.optimizer_steps == accumulated.optimizer_steps == 2
    assert accumulated.final_loss == pytest.approx(whole.final_loss, rel=1e-4)


def reward_model(directory: Path, base: Path) -> Path:
    return build_tiny_classifier(directory, base, seed=3)


@pytest.mark.parametrize("method", ["sft", "dpo", "ln-dpo", "simpo", "var"])
def test_cli_trains_every_method(method, tiny_chat_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--method", method, "--model", str(tiny_chat_model), "--data", str(pairs_file),
                 "--out", str(out), "--learning_rate", "1e-3", "--batch_size", "4", "--max_length", "64",
                 "--max_prompt_length", "32"])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    assert (out / "model" / "model.safetensors").exists()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == method and resolved["learning_rate"] == 1e-3
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    reloaded = load_causal_lm(str(out / "model"))
    assert reloaded.config.vocab_size == load_causal_lm(str(tiny_chat_model)).config.vocab_size


def test_var_takes_rewards_from_a_reward_model(tiny_model, pairs_file, tmp_path):
    rm = reward_model(tmp_path / "rm", tiny_model)
    result = train(config_for(tiny_model, pairs_file, tmp_path / "run", method="var",
                              reward_model=str(rm), params={"lam": 0.5, "z_estimator": "prompt"}))
    assert math.isfinite(result.final_loss)
    [cache_file] = (tmp_path / "cache").glob("rewards-*.safetensors")
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification
    cached = load_file(str(cache_file))
    # Independent scoring of the first pair: plain format text, one unpadded sequence.
    pair = load_pairs(str(pairs_file)).pairs[0]
    tokenizer = load_tokenizer(str(rm))
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    model.config.pad_token_id = tokenizer.pad_token_id  # HF pools at the last non-pad token
    for response, name in ((pair.chosen, "chosen"), (pair.rejected, "rejected")):
        text = f"\n\nHuman: {pair.prompt[0]['content']}\n\nAssistant: {response}"
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert cached[name][0].item() == pytest.approx(expected, abs=1e-5)


def test_resolved_config_reruns_identically(tiny_model, pairs_file, tmp_path):
    first = train(config_for(tiny_model, pairs_file, tmp_path / "a", method="ln-dpo", params={"beta": 3.0}))
    code = main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b")])
    assert code == 0
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert summary["params"] == {"beta": 3.0}
    assert summary["final_loss"] == pytest.approx(first.final_loss, rel=1e-6)


def test_bad_hyperparameter_fails_before_anything_is_written(tiny_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file),
                 "--out", str(out), "--bta", "0.2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bta" in err and "did you mean 'beta'" in err and "Traceback" not in err
    assert not out.exists()
    code = main(["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file),
                 "--out", str(out), "--beta", "-1"])
    assert code == 2 and "must be > 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_accelerate_two_processes_match_one_process(tiny_model, pairs_file, tmp_path):
    """Same global batch (4 pairs): 1 process × 4 vs 2 processes × 2 reach the same final loss."""
    common = ["-m", "alignlab", "train", "--method", "dpo", "--model", str(tiny_model), "--data",
              str(pairs_file), "--learning_rate", "5e-3", "--warmup_ratio", "0", "--lr_scheduler",
              "constant", "--max_length", "64", "--max_prompt_length", "32", "--cache_dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one"), "--batch_size", "4"],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29517"]
    double = subprocess.run([*launch, *common, "--out", str(tmp_path / "two"), "--batch_size", "2"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "train_summary.json").read_text())
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["optimizer_steps"] == one["optimizer_steps"] == 4
    assert two["pairs_trained"] == one["pairs_trained"] == 16
    # Tolerance: float32 reductions in a different order across processes.
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4, abs=1e-5)


def test_separate_reference_model_is_loaded_for_the_cache(tiny_model, tiny_chat_model, pairs_file, tmp_path, monkeypatch):
    """A reference other than the policy is loaded once, on a cache miss, and its log-probs differ."""
    import shutil
    other = shutil.copytree(tiny_model, tmp_path / "other")
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(other)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(other)
    loads = record_model_loads(monkeypatch)
    result = train(config_for(tiny_model, pairs_file, tmp_path / "run", reference_model=str(other)))
    assert loads == [str(tiny_model), str(other)]
    assert result.reference_cache_hit is False
    first_step = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first_step["margin"]) > 1e-3  # reference ≠ initial policy: the margin starts away from 0
    default = train(config_for(tiny_model, pairs_file, tmp_path / "default"))
    assert json.loads((tmp_path / "default" / "metrics.jsonl").read_text().splitlines()[0])["margin"] == 0.0
    assert default.reference_cache_hit is False


def test_max_steps_stops_early_and_snapshots_mark_the_curve(tiny_model, pairs_file, tmp_path):
    from safetensors.torch import load_file

    result = train(config_for(tiny_model, pairs_file, tmp_path / "run", max_steps=3, snapshot_steps=2, epochs=5))
    assert result.optimizer_steps == 3 and result.pairs_trained == 12  # 3 steps of 4 pairs, not 5 epochs
    snapshots = sorted((tmp_path / "run" / "snapshots").iterdir())
    assert [s.name for s in snapshots] == ["step-000002", "step-000003"]  # every 2 steps, and the last
    points = [json.loads((s / "snapshot.json").read_text()) for s in snapshots]
    assert [(p["step"], p["pairs_seen"], p["responses_seen"]) for p in points] == [(2, 8, 16), (3, 12, 24)]
    assert 0 < points[0]["train_seconds"] < points[1]["train_seconds"] <= result.seconds + 1e-3  # ms-rounded
    last = load_file(snapshots[-1] / "model.safetensors")
    final = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["setup_seconds"] > 0 and summary["optimizer_steps"] == 3


def test_trls_implicit_text_pairs_train_on_their_raw_texts(tiny_model, tmp_path):
    """TRL's implicit-prompt text format with raw_prompts: the reference log-probs the trainer caches are
    those of the prompt text and response text as the tokenizer encodes them (plus EOS), nothing added."""
    from alignlab.data.tokenise import TokenizedPair

    records = [{"chosen": f"\n\nHuman: What color is the {thing}?\n\nAssistant: It is {color}.",
                "rejected": f"\n\nHuman: What color is the {thing}?\n\nAssistant: Sorry, no idea."}
               for thing, color in (("sky", "blue"), ("leaf", "green"), ("snow", "white"), ("coal", "black"))]
    data = tmp_path / "trl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cache = tmp_path / "cache"
    train(config_for(tiny_model, data, tmp_path / "run", raw_prompts=True, cache_dir=str(cache), max_length=128,
                     max_prompt_length=96))
    tokenizer = load_tokenizer(str(tiny_model))
    examples = []
    for record in records:
        prompt = record["chosen"][:record["chosen"].index(" It is")]  # TRL: the shared text, less its final space
        examples.append(TokenizedPair(
            tokenizer(prompt)["input_ids"],
            *(tokenizer(record[side][len(prompt):], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
              for side in ("chosen", "rejected"))))
    assert_rows_are(cached_reference_rows(cache), *unbatched_logps(load_causal_lm(str(tiny_model)).eval(), examples))
